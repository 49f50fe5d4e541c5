//! The Redis-side decisions, each a port of its Lua script (named on each function) run under the
//! memory's lock: same keys, same answers, same TTLs.

use crate::domain::PhoneNumber;
use crate::error::AppResult;
use crate::services::lockout::{LockoutSettings, LockoutStore};
use crate::services::otp::{CodeStore, Consumed, IssueRequest, OtpSettings};
use crate::services::outbox::Appender;
use crate::services::phone_change::PhoneChangeStore;
use crate::services::registration::RegistrationStore;

use super::Memory;
use super::queue::Queued;

impl CodeStore for Memory {
    /// `otp::ISSUE_LUA`.
    async fn issue(&self, r: &IssueRequest<'_>, s: &OtpSettings, outbox: &Appender) -> AppResult<(i64, i64)> {
        let (otp, sends) = (
            self.keys.phone(r.phone, "otp"),
            self.keys.phone(r.phone, "otp_sends"),
        );
        let ip = self.keys.other(&format!("ip:{}:code_requests", r.client));
        let hour = self.keys.other("sms:hour");
        let mut guard = self.lock();
        let state = &mut *guard;
        let kv = &mut state.kv;
        if kv.zscore(&sends, r.send_id).is_some() {
            return Ok((0, 0));
        }
        if let Some(wait) = kv.over_budget(&ip, s.ip_max_code_requests.into(), s.ip_window_seconds as i64) {
            return Ok((3, wait));
        }
        let now = kv.now;
        let window = s.window_seconds as i64 * 1000;
        let sent = kv.sliding_count(&sends, window);
        if sent > 0 {
            let cooldown = s.resend_cooldown_seconds as i64 * 1000;
            if cooldown > 0 {
                let wait = kv.zlast(&sends).unwrap_or(now) + cooldown - now;
                if wait > 0 {
                    return Ok((1, wait));
                }
            }
            if sent >= i64::from(s.max_sends_per_window) {
                return Ok((2, kv.sliding_wait(&sends, window)));
            }
        }
        if r.sms {
            if state.queue.len(now) >= outbox.max_len {
                return Ok((5, 0));
            }
            // A refused SMS is given back: only a sent one spends the service's budget.
            if let Some(wait) = kv.over_budget(&hour, s.sms_max_per_hour.into(), 3600) {
                kv.decr(&hour);
                return Ok((4, wait));
            }
        }
        kv.hset(&otp, &[("h", r.mac.clone()), ("tries", "0".into())]);
        kv.expire(&otp, s.ttl_seconds as i64);
        kv.sliding_add(&sends, r.send_id, window);
        if r.sms {
            state.queue.append(
                Queued {
                    message_id: r.send_id.to_owned(),
                    to: r.phone.e164().to_owned(),
                    sealed: r.sealed.to_owned(),
                    notice: None,
                    created_ms: r.queued_at_ms,
                },
                now,
                outbox.ttl_seconds,
            );
            drop(guard);
            self.queued.notify_waiters();
        }
        Ok((0, 0))
    }

    /// `otp::CHECK_LUA`.
    async fn check(
        &self,
        phone: &PhoneNumber,
        client: &str,
        mac: &str,
        s: &OtpSettings,
    ) -> AppResult<Vec<i64>> {
        let otp = self.keys.phone(phone, "otp");
        let fails = self.keys.phone(phone, "otp_fails");
        let sends = self.keys.phone(phone, "otp_sends");
        let ip = self.keys.other(&format!("ip:{client}:code_checks"));
        let mut state = self.lock();
        let kv = &mut state.kv;
        if let Some(wait) = kv.over_budget(&ip, s.ip_max_code_checks.into(), s.ip_window_seconds as i64) {
            return Ok(vec![4, wait]);
        }
        let now = kv.now;
        let window = s.window_seconds as i64 * 1000;
        if let Some(wait) = kv.sliding_full(&fails, s.max_failures_per_window.into(), window) {
            return Ok(vec![3, wait]);
        }
        let Some(h) = kv.hget(&otp, "h") else {
            return Ok(vec![1, 0]);
        };
        if h == mac {
            let tries = kv.hget(&otp, "tries").and_then(|t| t.parse().ok()).unwrap_or(0);
            let expires_at = now + kv.pttl(&otp);
            let newest = kv.zlast(&sends).unwrap_or(0);
            kv.del(&otp);
            return Ok(vec![0, 0, tries, expires_at, newest]);
        }
        kv.sliding_add(&fails, &uuid::Uuid::new_v4().simple().to_string(), window);
        if kv.hincrby(&otp, "tries", 1) >= i64::from(s.max_attempts) {
            kv.del(&otp);
            return Ok(vec![2, 0]);
        }
        Ok(vec![1, 0])
    }

    /// `otp::RESTORE_LUA`.
    async fn restore(&self, phone: &PhoneNumber, mac: &str, c: &Consumed) -> AppResult<bool> {
        let otp = self.keys.phone(phone, "otp");
        let sends = self.keys.phone(phone, "otp_sends");
        let mut state = self.lock();
        let kv = &mut state.kv;
        if kv.exists(&otp) || kv.zlast(&sends).unwrap_or(0) != c.newest_send {
            return Ok(false);
        }
        let left = c.expires_at_ms - kv.now;
        if left <= 0 {
            return Ok(false);
        }
        kv.hset(&otp, &[("h", mac.to_owned()), ("tries", c.tries.to_string())]);
        kv.pexpire(&otp, left);
        Ok(true)
    }

    async fn revoke(&self, phone: &PhoneNumber) -> AppResult<()> {
        let otp = self.keys.phone(phone, "otp");
        self.lock().kv.del(&otp);
        Ok(())
    }
}

impl LockoutStore for Memory {
    /// `lockout::RESERVE_LUA`.
    async fn reserve(
        &self,
        phone: &PhoneNumber,
        client: &str,
        id: &str,
        s: &LockoutSettings,
        lease_ms: u64,
    ) -> AppResult<(i64, i64)> {
        let (fails, inflight, lock) = (
            self.keys.phone(phone, "pw_fails"),
            self.keys.phone(phone, "pw_inflight"),
            self.keys.phone(phone, "pw_lock"),
        );
        let ip = self.keys.other(&format!("ip:{client}:password_attempts"));
        let mut state = self.lock();
        let kv = &mut state.kv;
        if kv.zscore(&inflight, id).is_some() {
            return Ok((0, 0));
        }
        let pttl = kv.pttl(&lock);
        if pttl > 0 {
            return Ok((1, pttl));
        }
        if pttl == -1 {
            kv.expire(&lock, s.lock_seconds as i64);
            return Ok((1, s.lock_seconds as i64 * 1000));
        }
        if let Some(wait) = kv.over_budget(&ip, s.ip_max_attempts.into(), s.ip_window_seconds as i64) {
            return Ok((3, wait));
        }
        let now = kv.now;
        kv.zrem_upto(&inflight, now);
        if kv.zcard(&fails) + kv.zcard(&inflight) >= i64::from(s.max_failures) {
            return Ok((2, 0));
        }
        let lease = lease_ms as i64;
        kv.zadd(&inflight, now + lease, id);
        kv.pexpire(&inflight, lease);
        Ok((0, 0))
    }

    /// `lockout::FAIL_LUA`.
    async fn fail(&self, phone: &PhoneNumber, id: &str, s: &LockoutSettings) -> AppResult<bool> {
        let (fails, inflight, lock) = (
            self.keys.phone(phone, "pw_fails"),
            self.keys.phone(phone, "pw_inflight"),
            self.keys.phone(phone, "pw_lock"),
        );
        let mut state = self.lock();
        let kv = &mut state.kv;
        kv.zrem(&inflight, id);
        let now = kv.now;
        kv.zadd(&fails, now, id);
        kv.expire(&fails, s.lock_seconds as i64);
        if kv.zcard(&fails) >= i64::from(s.max_failures) {
            kv.set_ex(&lock, "1", s.lock_seconds as i64);
            return Ok(true);
        }
        Ok(false)
    }

    /// `lockout::CLEAR_LUA`.
    async fn clear(&self, phone: &PhoneNumber, id: Option<&str>) -> AppResult<bool> {
        let (fails, inflight, lock) = (
            self.keys.phone(phone, "pw_fails"),
            self.keys.phone(phone, "pw_inflight"),
            self.keys.phone(phone, "pw_lock"),
        );
        let mut state = self.lock();
        let kv = &mut state.kv;
        let was_locked = kv.exists(&lock);
        kv.del(&fails);
        kv.del(&lock);
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            kv.zrem(&inflight, id);
        }
        Ok(was_locked)
    }

    async fn lock_pttl(&self, phone: &PhoneNumber) -> AppResult<i64> {
        let lock = self.keys.phone(phone, "pw_lock");
        Ok(self.lock().kv.pttl(&lock))
    }

    async fn release(&self, phone: &PhoneNumber, id: &str) -> AppResult<()> {
        let inflight = self.keys.phone(phone, "pw_inflight");
        self.lock().kv.zrem(&inflight, id);
        Ok(())
    }
}

impl RegistrationStore for Memory {
    /// `registration::CREATE_LUA`.
    async fn create(&self, key: &str, phone: &PhoneNumber, ttl_seconds: u64) -> AppResult<()> {
        let set = self.keys.phone(phone, "reg_tokens");
        let mut state = self.lock();
        let kv = &mut state.kv;
        kv.hset(key, &[("p", phone.e164().to_owned()), ("n", "0".into())]);
        kv.expire(key, ttl_seconds as i64);
        kv.sadd(&set, key);
        kv.expire(&set, ttl_seconds as i64);
        Ok(())
    }

    /// `registration::PRESENT_LUA`.
    async fn present(&self, key: &str, max: u32) -> AppResult<Option<String>> {
        let mut state = self.lock();
        let kv = &mut state.kv;
        let Some(p) = kv.hget(key, "p") else {
            return Ok(None);
        };
        if kv.hincrby(key, "n", 1) > i64::from(max) {
            return Ok(None);
        }
        Ok(Some(p))
    }

    /// `registration::CLAIM_LUA`.
    async fn claim(
        &self,
        key: &str,
        claim_id: &str,
        lease_ms: u64,
        new_user_id: &str,
    ) -> AppResult<Option<(String, String)>> {
        let mut state = self.lock();
        let kv = &mut state.kv;
        let Some(p) = kv.hget(key, "p") else {
            return Ok(None);
        };
        let now = kv.now;
        if let Some(holder) = kv.hget(key, "c")
            && holder != claim_id
            && kv
                .hget(key, "ce")
                .and_then(|ce| ce.parse::<i64>().ok())
                .is_some_and(|ce| ce > now)
        {
            return Ok(None);
        }
        let u = kv.hget(key, "u").unwrap_or_else(|| new_user_id.to_owned());
        kv.hset(
            key,
            &[
                ("c", claim_id.to_owned()),
                ("ce", (now + lease_ms as i64).to_string()),
                ("u", u.clone()),
            ],
        );
        Ok(Some((p, u)))
    }

    /// `registration::UNCLAIM_LUA`.
    async fn unclaim(&self, key: &str, claim_id: &str) -> AppResult<()> {
        let mut state = self.lock();
        let kv = &mut state.kv;
        if kv.hget(key, "c").as_deref() == Some(claim_id) {
            kv.hdel(key, &["c", "ce"]);
        }
        Ok(())
    }

    async fn finish(&self, key: &str) -> AppResult<()> {
        self.lock().kv.del(key);
        Ok(())
    }

    /// `registration::REVOKE_ALL_LUA`.
    async fn revoke_all(&self, phone: &PhoneNumber) -> AppResult<u64> {
        let set = self.keys.phone(phone, "reg_tokens");
        let mut state = self.lock();
        let kv = &mut state.kv;
        let mut n = 0;
        for key in kv.smembers(&set) {
            n += u64::from(kv.del(&key));
        }
        kv.del(&set);
        Ok(n)
    }
}

impl PhoneChangeStore for Memory {
    async fn start(&self, phone: &PhoneNumber, user_id: &str, ttl_seconds: u64) -> AppResult<()> {
        let key = self.keys.phone(phone, "phone_change");
        self.lock().kv.set_ex(&key, user_id, ttl_seconds as i64);
        Ok(())
    }

    async fn owner(&self, phone: &PhoneNumber) -> AppResult<Option<String>> {
        let key = self.keys.phone(phone, "phone_change");
        Ok(self.lock().kv.get(&key))
    }

    /// `phone_change::FINISH_LUA`.
    async fn finish(&self, phone: &PhoneNumber, user_id: &str) -> AppResult<()> {
        let key = self.keys.phone(phone, "phone_change");
        let mut state = self.lock();
        if state.kv.get(&key).as_deref() == Some(user_id) {
            state.kv.del(&key);
        }
        Ok(())
    }
}
