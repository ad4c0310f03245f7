//! flexgate's sessions by the connection id it gave them, for translating `KILL`.
//!
//! flexgate greets before the server is dialled, so the connection id a client sees is
//! flexgate's, not the server's thread id. Clients cancel queries by that id (`KILL QUERY <id>`
//! from a second connection), so flexgate maps its ids to the server's.
//!
//! The ids flexgate hands out lie in `[2^31, 2^32)`. A server's thread ids count up from 1,
//! so they enter that range only after two billion connections since the server started; below
//! it an id is always the server's own and passes through untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The lowest connection id flexgate hands out.
pub const SYNTHETIC_BASE: u32 = 0x8000_0000;

/// The live sessions, owned by the running proxy and shared by its listeners.
#[derive(Debug)]
pub struct SessionRegistry {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    next: u32,
    /// Synthetic id → the server's thread id, once the server has greeted that session.
    sessions: HashMap<u32, Option<u32>>,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self::starting_at(SYNTHETIC_BASE + 1)
    }
}

impl SessionRegistry {
    /// A registry whose first id is `first` (tests start near the top to test wrapping).
    pub fn starting_at(first: u32) -> Self {
        Self { inner: Mutex::new(Inner { next: first.max(SYNTHETIC_BASE), sessions: HashMap::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent whatever a panicking holder did: every update is one call.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Allocates an id for a new session; it is released when the returned handle drops.
    pub fn register(self: &Arc<Self>) -> Registered {
        let mut inner = self.lock();
        let mut id = inner.next;
        // At most one lap of the id space; a full registry (2^31 live sessions) cannot happen
        // before memory runs out, but the loop stays bounded regardless.
        for _ in 0..=inner.sessions.len() {
            if !inner.sessions.contains_key(&id) {
                break;
            }
            id = next_id(id);
        }
        inner.next = next_id(id);
        inner.sessions.insert(id, None);
        Registered { registry: self.clone(), id }
    }

    /// What a `KILL <id>` sent through flexgate should name: the server's thread id for one of
    /// flexgate's connected sessions, `None` for any other id (left as the client wrote it).
    pub fn server_id(&self, id: u32) -> Option<u32> {
        if id < SYNTHETIC_BASE {
            return None;
        }
        self.lock().sessions.get(&id).copied().flatten()
    }

    /// Sessions now registered.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn next_id(id: u32) -> u32 {
    if id == u32::MAX { SYNTHETIC_BASE } else { id + 1 }
}

/// One session's entry; removed from the registry on drop.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<SessionRegistry>,
    id: u32,
}

impl Registered {
    /// The connection id flexgate gave the client.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Records the server's thread id once the server has greeted this session.
    pub fn connected(&self, server_id: u32) {
        if let Some(slot) = self.registry.lock().sessions.get_mut(&self.id) {
            *slot = Some(server_id);
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().sessions.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_synthetic_unique_and_released() {
        let r = Arc::new(SessionRegistry::starting_at(u32::MAX - 1));
        let a = r.register();
        let b = r.register();
        let c = r.register();
        assert_eq!([a.id(), b.id(), c.id()], [u32::MAX - 1, u32::MAX, SYNTHETIC_BASE], "wraps within the range");
        drop(b);
        assert_eq!(r.len(), 2);
        // The next lap skips ids still in use.
        let r2 = Arc::new(SessionRegistry::starting_at(SYNTHETIC_BASE));
        let x = r2.register();
        r2.lock().next = x.id();
        let y = r2.register();
        assert_eq!(y.id(), x.id() + 1, "the id in use was skipped");
    }

    #[test]
    fn only_connected_synthetic_ids_translate() {
        let r = Arc::new(SessionRegistry::default());
        let s = r.register();
        assert_eq!(r.server_id(s.id()), None, "not connected yet");
        s.connected(42);
        assert_eq!(r.server_id(s.id()), Some(42));
        assert_eq!(r.server_id(42), None, "a real thread id passes through");
        assert_eq!(r.server_id(s.id() + 1), None, "an unknown synthetic id passes through");
        let id = s.id();
        drop(s);
        assert_eq!(r.server_id(id), None);
        assert!(r.is_empty());
    }
}
