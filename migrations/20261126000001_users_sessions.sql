-- Users, one per phone. The phone is stored in E.164 form (`+16502530000`) and is unique: that
-- constraint, not application code, is what keeps one account per phone when registrations race.
create table users (
    id            uuid primary key,
    phone         text not null constraint users_phone_key unique,
    -- argon2id PHC string; the parameters travel with it, so they can be raised later.
    password_hash text not null,
    first_name    text,
    last_name     text,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

-- A session is what a sign-in creates and a logout revokes. Access tokens carry its id (`sid`) and
-- `me`/`logout` check it is still live, so a logout takes effect at once rather than at token expiry.
-- `expires_at` is the absolute lifetime (30 days by default): rotating refresh tokens never extends it.
create table sessions (
    id             uuid primary key,
    user_id        uuid not null references users (id) on delete cascade,
    created_at     timestamptz not null default now(),
    expires_at     timestamptz not null,
    revoked_at     timestamptz,
    -- 'logout', 'logout_all' or 'refresh_token_reuse'
    revoked_reason text
);

create index sessions_live_by_user on sessions (user_id) where revoked_at is null;

-- Refresh tokens are stored only as SHA-256 of the token (256 random bits: a fast hash is enough, there
-- is nothing to brute-force). Each use marks the row used and issues a new one (rotation); presenting a
-- used token again is reuse, which revokes the whole session (OAuth 2.0 Security BCP, RFC 9700 4.14).
create table refresh_tokens (
    token_hash bytea primary key,
    session_id uuid not null references sessions (id) on delete cascade,
    created_at timestamptz not null default now(),
    used_at    timestamptz
);

create index refresh_tokens_by_session on refresh_tokens (session_id);
