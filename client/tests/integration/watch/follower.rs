//! A follower of users over a `Watch`: copies built only from its events,
//! as the README's gateway recipe applies them, each event checked for its
//! place in its user's order, and compared with `GetUserReadStates`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use readstates_client::proto::{GetUserReadStatesRequest, GetUserReadStatesResponse, ReadState};
use readstates_client::{ReadStatesClient, Watch, WatchEvent, WatchItem};

/// A hang guard: how long an expected event may take.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One user's copy, built from its events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Copy {
    pub version: u64,
    pub states: BTreeMap<u64, ReadState>,
}

/// Every user's copy, and every event received, in order.
#[derive(Default)]
pub struct Follower {
    pub copies: HashMap<u64, Copy>,
    pub events: Vec<WatchEvent>,
    /// Every change received: (user, channel, version).
    changes: HashSet<(u64, u64, u64)>,
}

impl Follower {
    /// Applies `event` as the README's gateway recipe says; checks that
    /// it moves the user's version forward (changes of one call share it)
    /// and that no change comes twice.
    pub fn apply(&mut self, event: WatchEvent) {
        let copy = self.copies.entry(event.user_id()).or_default();
        let change = match &event {
            WatchEvent::CatchUp { .. } => None,
            WatchEvent::Changed(state) => Some((state.user_id, state.channel_id, state.version)),
            WatchEvent::Deleted(pair) => Some((pair.user_id, pair.channel_id, pair.version)),
        };
        if let Some(change) = change {
            assert!(self.changes.insert(change), "twice: {event:?}");
        }
        match &event {
            WatchEvent::CatchUp { delta, .. } => {
                if delta.reset {
                    copy.states.clear();
                }
                for state in &delta.read_states {
                    copy.states.insert(state.channel_id, *state);
                }
                for deleted in &delta.deleted {
                    copy.states.remove(&deleted.channel_id);
                }
            }
            WatchEvent::Changed(state) => {
                assert!(state.version >= copy.version, "{event:?} after {copy:?}");
                copy.states.insert(state.channel_id, *state);
            }
            WatchEvent::Deleted(deleted) => {
                assert!(deleted.version >= copy.version, "{event:?} after {copy:?}");
                copy.states.remove(&deleted.channel_id);
            }
        }
        copy.version = event.version();
        self.events.push(event);
    }

    /// Takes the watch's next item, which must be an event, and applies it.
    pub async fn step(&mut self, watch: &mut Watch) {
        match next(watch).await {
            Ok(event) => self.apply(event),
            Err(error) => panic!("{error}"),
        }
    }

    /// Applies events until every user's copy equals its states as
    /// `client` reads them (a copy at the version read must equal them
    /// once the rest of that version's call, in the same message, is in).
    pub async fn catch_up_with(
        &mut self,
        watch: &mut Watch,
        client: &ReadStatesClient,
        users: &[u64],
    ) {
        for &user_id in users {
            let truth = copy_of(&read_all(client, user_id).await);
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                let copy = self.copies.get(&user_id).cloned().unwrap_or_default();
                if copy == truth {
                    break;
                }
                assert!(
                    copy.version <= truth.version,
                    "user {user_id}: {copy:?} past {truth:?}"
                );
                match tokio::time::timeout_at(deadline, watch.next()).await {
                    Ok(Some(Ok(event))) => self.apply(event),
                    Ok(Some(Err(error))) => panic!("{error}"),
                    Ok(None) => panic!("the watch's task is gone"),
                    Err(_) => assert_eq!(copy, truth, "user {user_id}: no event in time"),
                }
            }
        }
    }

    /// Returns the events of `user_id` received from the `from`-th on.
    pub fn events_of(&self, user_id: u64, from: usize) -> Vec<&WatchEvent> {
        self.events[from..]
            .iter()
            .filter(|event| event.user_id() == user_id)
            .collect()
    }
}

/// Returns the watch's next item, failing the test past [`PATIENCE`].
pub async fn next(watch: &mut Watch) -> WatchItem {
    tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("the watch yields its next event in time")
        .expect("the watch's task is running")
}

pub async fn read_all(client: &ReadStatesClient, user_id: u64) -> GetUserReadStatesResponse {
    let request = GetUserReadStatesRequest {
        user_id,
        since_version: None,
    };
    client.get_user_read_states(request).await.unwrap()
}

pub fn copy_of(truth: &GetUserReadStatesResponse) -> Copy {
    Copy {
        version: truth.version,
        states: truth
            .read_states
            .iter()
            .map(|state| (state.channel_id, *state))
            .collect(),
    }
}

/// Returns the event's kind and version, or for a catch-up its size.
pub fn kind(event: &WatchEvent) -> (&'static str, u64) {
    match event {
        WatchEvent::CatchUp { delta, .. } => ("catch_up", delta.read_states.len() as u64),
        WatchEvent::Changed(state) => ("changed", state.channel_id),
        WatchEvent::Deleted(deleted) => ("deleted", deleted.channel_id),
    }
}

/// Polls `condition` until it holds, failing the test past [`PATIENCE`].
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
