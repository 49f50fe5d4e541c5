-- Security events (OWASP ASVS 7.1/7.2: who, what, when, from where; never a secret). One row per event.
-- No foreign key to users: the trail outlives a deleted account (that is when it is needed).
-- The phone is kept masked (+1650***0000) for reading and as a SHA-256 digest for lookups
-- (`phone-auth admin audit --phone`); never in clear: the users table is the only place for that.
create table audit_events (
    id           bigint generated always as identity primary key,
    at           timestamptz not null default now(),
    -- code_sent, code_verified, code_check_failed, code_burnt, signed_up, signed_in, sign_in_failed,
    -- locked, unlocked, token_refreshed, refresh_reuse_detected, signed_out, admin_*
    event        text not null,
    user_id      uuid,
    phone_masked text,
    phone_digest bytea,
    client_ip    text,
    user_agent   text,
    session_id   uuid,
    detail       jsonb not null default '{}'
);

create index audit_events_by_user on audit_events (user_id, id) where user_id is not null;
create index audit_events_by_phone on audit_events (phone_digest, id) where phone_digest is not null;
-- The retention purge deletes by time.
create index audit_events_at on audit_events (at);
