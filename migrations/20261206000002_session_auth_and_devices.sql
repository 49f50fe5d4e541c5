-- How and when a session was signed in, so that sensitive changes (a new phone, deleting the account)
-- can ask for a recent sign-in (OWASP ASVS 4.0 3.7.1: re-authentication before sensitive changes).
-- They live on the session row, not only in the access token, so that a refresh keeps the original
-- sign-in time: rotating refresh tokens must never make an old sign-in look recent.
-- `auth_time` and `amr` are the names of RFC 9068 2.2.1 / OpenID Connect Core 2 (values: RFC 8176,
-- 'pwd' for a password, 'sms' for a code sent by SMS). Sessions created before this migration get
-- their creation time and no method: they are never recent enough for a sensitive change.
alter table sessions
    add column auth_time    timestamptz not null default now(),
    add column amr          text[]      not null default '{}',
    -- The device, shown to the user in `mySessions` so they can tell their sessions apart and end the
    -- ones they do not recognise. The user agent is cut to 256 characters (a header can be 8 KiB).
    add column user_agent   text,
    add column ip           text,
    -- Bumped by each refresh: the last time the session was used to get a new access token.
    add column last_used_at timestamptz;

update sessions set auth_time = created_at;

-- `mySessions` lists a user's live sessions: `sessions_live_by_user` (user_id where not revoked)
-- already serves it.
