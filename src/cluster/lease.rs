//! The lease and membership tables (`migrations/0005_cluster.cql`) and
//! their statements. Leases are written only with lightweight transactions
//! at SERIAL consistency, so the cluster's Paxos orders every acquire,
//! renewal and release of a slot (SERIAL rather than LOCAL_SERIAL: two
//! instances in different datacenters still exclude each other). Each is
//! written with a TTL, so a dead owner's lease frees itself. None of them
//! is idempotent (a retried acquire that had been applied finds the row
//! taken), so the driver never retries them; a timed-out one may have been
//! applied, and the caller treats the slot as unknown.

use ::scylla::client::session::Session;
use ::scylla::response::query_result::QueryResult;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::SerialConsistency;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::value::{CqlValue, Row};
use futures_util::StreamExt;

use super::error::ClusterError;
use super::slots::Slot;
use crate::config::ScyllaConfig;
use crate::store::{driver_consistency, prepare_statement};

/// Who holds a lease: an instance id and its process's incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub instance_id: String,
    pub incarnation: i64,
}

/// This instance, as its lease and heartbeat rows name it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub holder: Holder,
    /// Where the other instances reach this one.
    pub address: String,
}

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it was applied.
    pub applied: bool,
    /// When not applied: who holds the lease now (`None`: nobody).
    pub holder: Option<Holder>,
}

/// The `meta` row recording the keyspace's slot count.
const SLOTS_KEY: &str = "cluster_slots";

/// The statements of the lease and membership tables.
pub struct LeaseTable {
    session: Session,
    keyspace: String,
    me: Identity,
    /// The TTL of leases and heartbeats, in whole seconds.
    ttl_secs: i32,
    acquire: PreparedStatement,
    renew: PreparedStatement,
    release: PreparedStatement,
    heartbeat: PreparedStatement,
    leave: PreparedStatement,
    members: PreparedStatement,
    record_slots: PreparedStatement,
    owners: PreparedStatement,
}

/// The statements, with [`KEYSPACE`] standing for the keyspace's name.
const KEYSPACE: &str = "{keyspace}";
const ACQUIRE: &str = "INSERT INTO {keyspace}.slot_leases (slot, owner, incarnation, address) \
                       VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?";
const RENEW: &str = "UPDATE {keyspace}.slot_leases USING TTL ? \
                     SET owner = ?, incarnation = ?, address = ? \
                     WHERE slot = ? IF owner = ? AND incarnation = ?";
const RELEASE: &str = "DELETE FROM {keyspace}.slot_leases WHERE slot = ? \
                       IF owner = ? AND incarnation = ?";
const HEARTBEAT: &str = "INSERT INTO {keyspace}.cluster_members (member, incarnation, address) \
                         VALUES (?, ?, ?) USING TTL ?";
const LEAVE: &str = "DELETE FROM {keyspace}.cluster_members WHERE member = ?";
const MEMBERS: &str = "SELECT member, incarnation, address FROM {keyspace}.cluster_members";
const RECORD_SLOTS: &str = "INSERT INTO {keyspace}.meta (name, value) VALUES (?, ?) IF NOT EXISTS";
const OWNERS: &str = "SELECT slot, owner, address FROM {keyspace}.slot_leases";

/// How a statement of the lease table runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A lightweight transaction (`IF ...`), at serial consistency.
    Conditional,
    /// A read, at the read consistency.
    Read,
    /// A plain write, at the write consistency.
    Write,
}

impl LeaseTable {
    /// Prepares the statements on `session`.
    pub async fn prepare(
        session: Session,
        config: &ScyllaConfig,
        me: Identity,
        ttl_secs: i32,
    ) -> Result<Self, ClusterError> {
        let keyspace = config.keyspace.clone();
        let prepare = |name: &'static str, kind: Kind, text: &str| {
            let (session, text) = (&session, text.replace(KEYSPACE, &keyspace));
            async move {
                let mut statement = prepare_statement(session, name, &text).await?;
                let consistency = match kind {
                    Kind::Read => config.read_consistency,
                    Kind::Conditional | Kind::Write => config.write_consistency,
                };
                statement.set_consistency(driver_consistency(consistency));
                if kind == Kind::Conditional {
                    statement.set_serial_consistency(Some(SerialConsistency::Serial));
                } else {
                    statement.set_is_idempotent(true);
                }
                Ok::<_, ClusterError>(statement)
            }
        };
        Ok(Self {
            acquire: prepare("acquire", Kind::Conditional, ACQUIRE).await?,
            renew: prepare("renew", Kind::Conditional, RENEW).await?,
            release: prepare("release", Kind::Conditional, RELEASE).await?,
            heartbeat: prepare("heartbeat", Kind::Write, HEARTBEAT).await?,
            leave: prepare("leave", Kind::Write, LEAVE).await?,
            members: prepare("members", Kind::Read, MEMBERS).await?,
            record_slots: prepare("record_slots", Kind::Conditional, RECORD_SLOTS).await?,
            owners: prepare("owners", Kind::Read, OWNERS).await?,
            session,
            keyspace,
            me,
            ttl_secs,
        })
    }

    /// Returns this instance's identity.
    pub fn me(&self) -> &Identity {
        &self.me
    }

    /// Records `slots` as the keyspace's slot count if none is recorded,
    /// and refuses a different recorded count.
    pub async fn check_slot_count(&self, slots: u32) -> Result<(), ClusterError> {
        const ACTION: &str = "recording the slot count";
        let result = self
            .session
            .execute_unpaged(&self.record_slots, (SLOTS_KEY, i64::from(slots)))
            .await
            .map_err(|error| request_failed(ACTION, error))?;
        let row = LwtRow::read(ACTION, result)?;
        if row.applied {
            return Ok(());
        }
        match row.bigint("value") {
            Some(recorded) if recorded == i64::from(slots) => Ok(()),
            Some(recorded) => Err(ClusterError::SlotCount {
                keyspace: self.keyspace.clone(),
                configured: slots,
                recorded,
            }),
            None => Err(ClusterError::Unreadable {
                action: ACTION,
                message: "the recorded slot count is null".to_owned(),
            }),
        }
    }

    /// Takes `slot` if nobody holds it.
    pub async fn acquire(&self, slot: Slot) -> Result<Outcome, ClusterError> {
        let values = (
            slot_value(slot),
            self.me.holder.instance_id.as_str(),
            self.me.holder.incarnation,
            self.me.address.as_str(),
            self.ttl_secs,
        );
        self.lease_request(&self.acquire, values, "acquiring a slot lease")
            .await
    }

    /// Extends `slot`'s lease by a full TTL if this process holds it.
    pub async fn renew(&self, slot: Slot) -> Result<Outcome, ClusterError> {
        let holder = &self.me.holder;
        let values = (
            self.ttl_secs,
            holder.instance_id.as_str(),
            holder.incarnation,
            self.me.address.as_str(),
            slot_value(slot),
            holder.instance_id.as_str(),
            holder.incarnation,
        );
        self.lease_request(&self.renew, values, "renewing a slot lease")
            .await
    }

    /// Gives `slot` up if this process holds it.
    pub async fn release(&self, slot: Slot) -> Result<Outcome, ClusterError> {
        let holder = &self.me.holder;
        let values = (
            slot_value(slot),
            holder.instance_id.as_str(),
            holder.incarnation,
        );
        self.lease_request(&self.release, values, "releasing a slot lease")
            .await
    }

    /// Runs one conditional lease statement and reads whether it applied.
    async fn lease_request(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<Outcome, ClusterError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|error| request_failed(action, error))?;
        LwtRow::read(action, result).map(LwtRow::outcome)
    }

    /// Writes this instance's heartbeat row, live for one TTL.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let values = (
            self.me.holder.instance_id.as_str(),
            self.me.holder.incarnation,
            self.me.address.as_str(),
            self.ttl_secs,
        );
        self.session
            .execute_unpaged(&self.heartbeat, values)
            .await
            .map_err(|error| request_failed("writing the heartbeat", error))?;
        Ok(())
    }

    /// Removes this instance's heartbeat row (a graceful stop).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.session
            .execute_unpaged(&self.leave, (self.me.holder.instance_id.as_str(),))
            .await
            .map_err(|error| request_failed("removing the heartbeat", error))?;
        Ok(())
    }

    /// Returns the live members (their heartbeat rows).
    pub async fn members(&self) -> Result<Vec<Holder>, ClusterError> {
        const ACTION: &str = "reading the members";
        let result = self
            .session
            .execute_unpaged(&self.members, ())
            .await
            .map_err(|error| request_failed(ACTION, error))?;
        let rows = result
            .into_rows_result()
            .map_err(|error| unreadable(ACTION, error))?;
        let mut members = Vec::new();
        for row in rows
            .rows::<(String, Option<i64>, Option<String>)>()
            .map_err(|error| unreadable(ACTION, error))?
        {
            let (instance_id, incarnation, _address) =
                row.map_err(|error| unreadable(ACTION, error))?;
            members.push(Holder {
                instance_id,
                incarnation: incarnation.unwrap_or_default(),
            });
        }
        Ok(members)
    }
}

impl LeaseTable {
    /// Returns every held slot's `(slot, owner, address)`, read in pages.
    pub async fn slot_owners(&self) -> Result<Vec<(Slot, String, String)>, ClusterError> {
        const ACTION: &str = "reading the slot owners";
        let pager = self
            .session
            .execute_iter(self.owners.clone(), ())
            .await
            .map_err(|error| request_failed(ACTION, error))?;
        let mut rows = pager
            .rows_stream::<(i32, Option<String>, Option<String>)>()
            .map_err(|error| unreadable(ACTION, error))?;
        let mut owners = Vec::new();
        while let Some(row) = rows.next().await {
            let (slot, owner, address) = row.map_err(|error| request_failed(ACTION, error))?;
            if let (Ok(slot), Some(owner), Some(address)) = (Slot::try_from(slot), owner, address) {
                owners.push((slot, owner, address));
            }
        }
        Ok(owners)
    }
}

/// The slot as the table's `int` column.
fn slot_value(slot: Slot) -> i32 {
    i32::try_from(slot).unwrap_or(i32::MAX)
}

/// The row a lightweight transaction answers with: `[applied]`, then, when
/// not applied, the columns its condition read.
struct LwtRow {
    applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl LwtRow {
    fn read(action: &'static str, result: QueryResult) -> Result<Self, ClusterError> {
        let rows = result
            .into_rows_result()
            .map_err(|error| unreadable(action, error))?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|spec| spec.name().to_owned())
            .collect();
        let row: Row = rows
            .first_row()
            .map_err(|error| unreadable(action, error))?;
        let columns: Vec<(String, Option<CqlValue>)> = names.into_iter().zip(row.columns).collect();
        let applied = columns
            .iter()
            .find(|(name, _)| name == "[applied]")
            .and_then(|(_, value)| match value {
                Some(CqlValue::Boolean(applied)) => Some(*applied),
                _ => None,
            })
            .ok_or_else(|| ClusterError::Unreadable {
                action,
                message: "no [applied] column".to_owned(),
            })?;
        Ok(Self { applied, columns })
    }

    fn value(&self, column: &str) -> Option<&CqlValue> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .and_then(|(_, value)| value.as_ref())
    }

    fn bigint(&self, column: &str) -> Option<i64> {
        match self.value(column) {
            Some(CqlValue::BigInt(value)) => Some(*value),
            _ => None,
        }
    }

    fn outcome(self) -> Outcome {
        let owner = match self.value("owner") {
            Some(CqlValue::Text(owner)) => Some(owner.clone()),
            _ => None,
        };
        let holder = owner.map(|instance_id| Holder {
            instance_id,
            incarnation: self.bigint("incarnation").unwrap_or_default(),
        });
        Outcome {
            applied: self.applied,
            holder,
        }
    }
}

fn request_failed(action: &'static str, error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Request {
        action,
        message: error.to_string(),
    }
}

fn unreadable(action: &'static str, error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unreadable {
        action,
        message: error.to_string(),
    }
}
