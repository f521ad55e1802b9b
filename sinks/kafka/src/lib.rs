//! The `kafka` sink: keyed records in upsert, changelog or append mode, through the
//! idempotent producer, durable when the brokers acknowledge them.
//!
//! ```text
//!  rows of a closed time ──encode per mode──▶ producer queue ──▶ brokers ──ack──▶ durable frontier
//! ```
//!
//! **Records.** Keys and values are JSON.
//! - `upsert`: key = the row key, value = the row value; a key whose value was retracted
//!   with no replacement gets a **tombstone** (null value), so a compacted topic holds
//!   exactly the output's current state.
//! - `changelog`: key = the row key (none for an unkeyed collection), value =
//!   `{"time": T, "diff": D, "key": K, "value": V}` for every update.
//! - `append`: value = the record (or its encoding in the sink's `format`), key = the
//!   format's partition key or else the row key; insertions only, in source order.
//!
//! A key's records always go to one partition (librdkafka's default partitioner hashes the
//! key), and a time's updates are produced before the next time's, so per key the topic
//! has the output's order.
//!
//! **Delivery.** The producer is idempotent (`enable.idempotence`): librdkafka retries
//! failed requests itself, without duplicates or reordering within a partition. By default
//! a record is retried until the broker takes it (`delivery_timeout_ms = 0`), so a broker
//! outage stalls the pipeline — the input is not read further than the in-flight limits —
//! and loses nothing. A record that fails for good (too large, no such topic, not
//! authorized, or timed out under a configured `delivery_timeout_ms`) fails the run with
//! the reason: a sink never skips a record silently.
//!
//! **Durability.** The sink's durable frontier advances to a frontier `F` once every record
//! of the times before `F` is acknowledged. Sources commit their offsets only behind the
//! durable frontier of every sink, so what the group's offsets say was read is in the topic.
//!
//! **After a crash.** A restarted pipeline produces the output after its last durable
//! point again (at-least-once). The records are keyed so that this never leaves doubled
//! *final state*: an `upsert` topic read as a table (or compacted) ends with the same value
//! per key, a `changelog` consumer deduplicates by (key, time), and `append` records carry
//! their source position or a delivery id for consumers to deduplicate. Exactly-once
//! output, with Kafka transactions committed together with the pipeline's checkpoint, is
//! the goal for brokers that support transactions once checkpoints exist.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use sluice_runtime::record::{Diff, Row, Time};
use sluice_runtime::sink::{Encode, PendingCommits, Record, Sink, SinkError, for_each_record};
use sluice_runtime::spec::{KafkaSinkSpec, SinkMode};
use sluice_runtime::value::Json;

/// How long one wait for room in a full producer queue lasts before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(50);

/// Which records the brokers have acknowledged, and the first permanent failure.
#[derive(Default)]
struct Acks {
    /// Every record numbered below this is acknowledged.
    lowest_unacked: u64,
    /// Acknowledged records above `lowest_unacked` (acks across partitions come out of order).
    ahead: BTreeSet<u64>,
    failure: Option<String>,
}

impl Acks {
    fn ack(&mut self, seq: u64) {
        if seq == self.lowest_unacked {
            self.lowest_unacked += 1;
            while self.ahead.remove(&self.lowest_unacked) {
                self.lowest_unacked += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
    }
}

/// The producer's context: logs to `tracing`, acknowledgements to [`Acks`].
pub struct Delivery {
    name: String,
    acks: Mutex<Acks>,
}

impl ClientContext for Delivery {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= RDKafkaLogLevel::Error as i32 {
            tracing::warn!(sink = %self.name, facility = fac, "kafka: {message}");
        } else if (level as i32) <= RDKafkaLogLevel::Notice as i32 {
            tracing::info!(sink = %self.name, facility = fac, "kafka: {message}");
        } else {
            tracing::debug!(sink = %self.name, facility = fac, "kafka: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(sink = %self.name, error = %error, "kafka: {reason}");
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        let Ok(mut acks) = self.acks.lock() else {
            return;
        };
        match result {
            Ok(_) => acks.ack(*seq),
            Err((e, m)) => {
                let failure = format!("a record for {}/{} was not delivered: {e}", m.topic(), m.partition());
                acks.failure.get_or_insert(failure);
            }
        }
    }
}

/// A sink writing one output to one Kafka topic.
pub struct KafkaSink {
    producer: BaseProducer<Delivery>,
    topic: String,
    mode: SinkMode,
    encoder: Option<Arc<dyn Encode>>,
    /// Records handed to the producer so far (the next record's number).
    sent: u64,
    /// Commits not yet known durable, with the records produced before each.
    commits: PendingCommits,
    key: Vec<u8>,
}

impl KafkaSink {
    /// A sink named `name` writing to `spec`'s topic in `mode`, encoding append records with
    /// `encoder` when the sink has a format other than JSON.
    pub fn new(
        spec: &KafkaSinkSpec,
        mode: SinkMode,
        encoder: Option<Arc<dyn Encode>>,
        name: &str,
    ) -> Result<Self, SinkError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &spec.brokers)
            .set("client.id", format!("sluice-{name}"))
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", spec.delivery_timeout_ms.to_string())
            .set("linger.ms", "5")
            .set("reconnect.backoff.max.ms", "2000");
        for (key, value) in &spec.options {
            config.set(key, value);
        }
        let context = Delivery {
            name: name.to_owned(),
            acks: Mutex::default(),
        };
        let producer: BaseProducer<Delivery> = config
            .create_with_context(context)
            .map_err(|e| SinkError::Config(format!("cannot create a Kafka producer: {e}")))?;
        Ok(KafkaSink {
            producer,
            topic: spec.topic.clone(),
            mode,
            encoder,
            sent: 0,
            commits: PendingCommits::default(),
            key: Vec::with_capacity(64),
        })
    }

    /// Fails if a record was lost for good.
    fn check(&self) -> Result<(), SinkError> {
        match self.producer.context().acks.lock() {
            Ok(acks) => match &acks.failure {
                Some(f) => Err(SinkError::Io(f.clone())),
                None => Ok(()),
            },
            Err(_) => Err(SinkError::Io("the acknowledgement state was poisoned".to_owned())),
        }
    }

    /// Produces `record`, keyed by the format's partition key or else its own key, waiting
    /// for room while the producer's queue is full.
    fn produce(&mut self, record: Record<'_>) -> Result<(), SinkError> {
        let keyed = match (record.format_key(), record.key) {
            (Some(k), _) => {
                self.key.clear();
                self.key.extend_from_slice(k.as_bytes());
                true
            }
            (None, Some(key)) => {
                self.key.clear();
                serde_json::to_writer(&mut self.key, &Json(key)).map_err(|e| SinkError::Io(e.to_string()))?;
                true
            }
            (None, None) => false,
        };
        let seq = self.sent;
        loop {
            let mut produced: BaseRecord<'_, [u8], [u8], Box<u64>> =
                BaseRecord::with_opaque_to(&self.topic, Box::new(seq));
            if keyed {
                produced = produced.key(&self.key[..]);
            }
            // No payload: a tombstone.
            if let Some(payload) = record.payload {
                produced = produced.payload(payload);
            }
            match self.producer.send(produced) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Backpressure: the brokers are slower than the pipeline, or down.
                    self.producer.poll(QUEUE_FULL_WAIT);
                    self.check()?;
                }
                Err((e, _)) => return Err(SinkError::Io(format!("cannot produce to `{}`: {e}", self.topic))),
            }
        }
        self.sent += 1;
        Ok(())
    }

    /// Records acknowledged so far: every record numbered below is.
    fn acknowledged(&self) -> u64 {
        self.producer
            .context()
            .acks
            .lock()
            .map_or(0, |acks| acks.lowest_unacked)
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, time: Time, updates: &[(Row, Diff)]) -> Result<(), SinkError> {
        self.check()?;
        // A handle of its own: `produce` borrows the whole sink.
        let encoder = self.encoder.clone();
        for_each_record(self.mode, encoder.as_deref(), time, updates, |record| {
            self.produce(record)
        })?;
        // Serve acknowledgements as we go, so the queue drains without a separate thread.
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn commit(&mut self, frontier: Option<Time>) -> Result<(), SinkError> {
        self.commits.commit(frontier, self.sent);
        if frontier.is_none() {
            // The end of the run: wait until every record is acknowledged (or fails).
            while self.producer.in_flight_count() > 0 {
                self.producer.poll(Duration::from_millis(100));
                self.check()?;
            }
        } else {
            self.producer.poll(Duration::ZERO);
        }
        self.check()?;
        self.commits.advance(self.acknowledged());
        Ok(())
    }

    fn durable(&self) -> Option<Time> {
        // Acknowledgements arrive between commits: look at them without waiting for one.
        self.commits.durable(self.acknowledged())
    }
}

#[cfg(test)]
mod tests;
