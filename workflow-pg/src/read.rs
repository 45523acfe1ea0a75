//! Reads beyond the [`Store`](tidewater::store::Store) trait, for readers that follow a run
//! from another process (a server streaming a run that executes elsewhere).

use tidewater::snapshot::EventRecord;
use tidewater::store::StoreError;

use crate::{PgStore, from_json};

impl PgStore {
    /// The events run `key` journaled to its stream numbered after `after`, in order: what
    /// [`Store::events`](tidewater::store::Store::events) returns past a cursor, read
    /// incrementally (a reader polling a long stream does not read it all again each time).
    ///
    /// ```no_run
    /// # fn demo(store: &tidewater_pg::PgStore) -> Result<(), tidewater::store::StoreError> {
    /// let mut cursor = 0;
    /// for (seq, event) in store.events_after("order-7", cursor)? {
    ///     println!("{seq}: {}", event.event);
    ///     cursor = seq;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the store cannot be read or an event is corrupt.
    pub fn events_after(
        &self,
        key: &str,
        after: u64,
    ) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.events_from(key, i64::try_from(after).unwrap_or(i64::MAX))
    }

    /// The events of run `key` numbered after `after` (all of them for `i64::MIN`).
    pub(crate) fn events_from(
        &self,
        key: &str,
        after: i64,
    ) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        let rows = self.rows_after(
            "SELECT seq, event FROM tidewater_events WHERE key = $1 AND seq > $2 ORDER BY seq",
            "event",
            key,
            after,
        )?;
        rows.into_iter()
            .map(|(seq, text)| {
                Ok((
                    seq,
                    from_json(&text, &format!("event {seq} of run `{key}`"))?,
                ))
            })
            .collect()
    }

    /// The `(seq, text)` rows `sql` selects for run `key` after `after` (its `$1` and `$2`),
    /// in order, each an `one` (event, message); a number this store never writes (below 1)
    /// is a corrupt row.
    pub(crate) fn rows_after(
        &self,
        sql: &'static str,
        one: &'static str,
        key: &str,
        after: i64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let k = key.to_string();
        let rows: Vec<(i64, String)> = self.call(move |connection| {
            connection.run(&format!("cannot read the {one}s of run `{k}`"), |client| {
                Ok(client
                    .query(sql, &[&k, &after])?
                    .into_iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect())
            })
        })?;
        rows.into_iter()
            .map(|(seq, text)| {
                // Numbers start at 1: anything else is a row this store never wrote.
                let seq = u64::try_from(seq)
                    .ok()
                    .filter(|&seq| seq > 0)
                    .ok_or_else(|| {
                        StoreError::new(format!("run `{key}` has an impossible {one} number {seq}"))
                    })?;
                Ok((seq, text))
            })
            .collect()
    }
}
