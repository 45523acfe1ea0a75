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
        let k = key.to_string();
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String)> = self.call(move |connection| {
            connection.run(&format!("cannot read the events of run `{k}`"), |client| {
                Ok(client
                    .query(
                        "SELECT seq, event FROM tidewater_events WHERE key = $1 AND seq > $2
                         ORDER BY seq",
                        &[&k, &after],
                    )?
                    .into_iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect())
            })
        })?;
        rows.into_iter()
            .map(|(seq, text)| {
                let seq = u64::try_from(seq).map_err(|_| {
                    StoreError::new(format!("run `{key}` has an impossible event number {seq}"))
                })?;
                Ok((
                    seq,
                    from_json(&text, &format!("event {seq} of run `{key}`"))?,
                ))
            })
            .collect()
    }
}
