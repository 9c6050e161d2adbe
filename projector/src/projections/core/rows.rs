//! The rows a batch reads and changes: one type per table, [`Rows`] for a
//! table's loaded and changed rows, and [`State`] holding them all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub(super) type Time = DateTime<Utc>;

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct UserRow {
    pub(super) username: String,
    pub(super) display_name: String,
    pub(super) email: String,
    pub(super) roles: Vec<String>,
    pub(super) created_at: Time,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct ConvRow {
    pub(super) kind: String,
    pub(super) title: Option<String>,
    pub(super) created_by: Uuid,
    pub(super) created_at: Time,
    pub(super) last_seq: i64,
    pub(super) last_message_seq: Option<i64>,
    pub(super) last_activity_at: Time,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct MemberRow {
    pub(super) role: String,
    pub(super) joined_seq: i64,
    pub(super) joined_at: Time,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct MessageRow {
    pub(super) seq: i64,
    pub(super) sender_id: Uuid,
    pub(super) client_msg_id: String,
    pub(super) body: Option<String>,
    pub(super) sent_at: Time,
    pub(super) edited_at: Option<Time>,
    pub(super) deleted: bool,
    /// Written by this batch (inserted) rather than loaded (updated);
    /// not a column, so a loaded row gets `false`.
    #[sqlx(skip)]
    pub(super) new: bool,
}

/// Rows of one table as loaded (`None`: known to be absent), changed in
/// memory; `dirty` keys are written back (upserted, or deleted if `None`).
#[derive(Debug)]
pub(super) struct Rows<K, V> {
    rows: HashMap<K, Option<V>>,
    dirty: BTreeSet<K>,
}

impl<K: Copy + Eq + Hash + Ord, V> Rows<K, V> {
    pub(super) fn new() -> Self {
        Self {
            rows: HashMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    pub(super) fn loaded(&mut self, key: K, value: V) {
        self.rows.insert(key, Some(value));
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.rows.get(key).and_then(Option::as_ref)
    }

    /// The row to change, if present (`UPDATE ... WHERE key`).
    pub(super) fn get_mut(&mut self, key: K) -> Option<&mut V> {
        let row = self.rows.get_mut(&key).and_then(Option::as_mut);
        if row.is_some() {
            self.dirty.insert(key);
        }
        row
    }

    /// `INSERT ... ON CONFLICT DO NOTHING`; true when inserted.
    pub(super) fn insert(&mut self, key: K, value: V) -> bool {
        if self.get(&key).is_some() {
            return false;
        }
        self.rows.insert(key, Some(value));
        self.dirty.insert(key);
        true
    }

    /// `INSERT ... ON CONFLICT DO UPDATE` with every column.
    pub(super) fn upsert(&mut self, key: K, value: V) {
        self.rows.insert(key, Some(value));
        self.dirty.insert(key);
    }

    /// `DELETE ... WHERE key`; the removed row.
    pub(super) fn remove(&mut self, key: K) -> Option<V> {
        let old = self.rows.insert(key, None).flatten();
        self.dirty.insert(key);
        old
    }

    /// `(key, Some(row))` to upsert and `(key, None)` to delete.
    pub(super) fn changes(&self) -> impl Iterator<Item = (&K, Option<&V>)> {
        self.dirty
            .iter()
            .map(|k| (k, self.rows.get(k).and_then(Option::as_ref)))
    }
}

/// Everything a batch can touch.
#[derive(Debug)]
pub(super) struct State {
    pub(super) users: Rows<Uuid, UserRow>,
    pub(super) convs: Rows<Uuid, ConvRow>,
    /// (conversation, user)
    pub(super) members: Rows<(Uuid, Uuid), MemberRow>,
    /// (conversation, user, joined_seq) -> left_seq, periods opened or
    /// closed by the batch.
    pub(super) periods: BTreeMap<(Uuid, Uuid, i64), Option<i64>>,
    /// (conversation, message_id)
    pub(super) messages: Rows<(Uuid, Uuid), MessageRow>,
    /// (conversation, user) -> seq
    pub(super) markers: Rows<(Uuid, Uuid), i64>,
}
