//! Walking every aggregate a secondary key finds, a page at a time, for sweeps and audits.

use crate::port::{IndexEntry, Store, StoreError, Versioned};

/// The pages of [`Store::find`] for one kind and index, in id order. Aggregates that change
/// during the walk are seen as they are when their page is read; one that leaves the index
/// before its page is simply not seen.
pub struct Pages<'a> {
    store: &'a dyn Store,
    tenant: &'a str,
    kind: &'a str,
    index: IndexEntry,
    size: usize,
    after: Option<String>,
    done: bool,
}

impl<'a> Pages<'a> {
    /// Pages of `size` aggregates of `kind` with `index` in `tenant`.
    pub fn new(
        store: &'a dyn Store,
        tenant: &'a str,
        kind: &'a str,
        index: IndexEntry,
        size: usize,
    ) -> Self {
        Pages {
            store,
            tenant,
            kind,
            index,
            size: size.max(1),
            after: None,
            done: false,
        }
    }

    /// Starts after aggregate `id` (a page token) instead of at the first.
    pub fn after(mut self, id: Option<String>) -> Self {
        self.after = id;
        self
    }

    /// The next page, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<(String, Versioned)>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .find(
                self.tenant,
                self.kind,
                &self.index,
                self.after.as_deref(),
                self.size,
            )
            .await?;
        self.done = page.len() < self.size;
        match page.last() {
            Some((id, _)) => self.after = Some(id.clone()),
            None => return Ok(None),
        }
        Ok(Some(page))
    }
}
