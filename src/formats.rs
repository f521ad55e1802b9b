//! Record formats wired into the engine: the decoders sources use, the encoders sinks use,
//! and the `cds` pre-filter pushed down into decoding.
//!
//! The formats themselves live in `sluice-formats`; this module adapts them to the engine's
//! [`Decode`] and [`Encode`] traits. It is also where one dataflow's stateless rule meets one
//! format's lazy parser, which neither crate may know about the other.

use std::sync::Arc;

use sluice_formats::{ImageRef, StreamRecordRef};
use sluice_runtime::Row;
use sluice_runtime::Value;
use sluice_runtime::ingest::Decode;
use sluice_runtime::sink::Encode;
use sluice_runtime::spec::Format;

/// The `dynamodb-stream` format: a change record with its images fully decoded.
pub struct DynamodbStreamDecoder;

impl Decode for DynamodbStreamDecoder {
    fn decode(&self, bytes: &[u8]) -> Result<Option<Value>, String> {
        sluice_formats::decode_stream_record(bytes)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The `dynamodb-item` format: one item of a table scan.
pub struct DynamodbItemDecoder;

impl Decode for DynamodbItemDecoder {
    fn decode(&self, bytes: &[u8]) -> Result<Option<Value>, String> {
        sluice_formats::decode_item(bytes).map(Some).map_err(|e| e.to_string())
    }
}

/// The `cds-update` format: an update as the original filter function wrote it.
pub struct CdsUpdateDecoder;

impl Decode for CdsUpdateDecoder {
    fn decode(&self, bytes: &[u8]) -> Result<Option<Value>, String> {
        sluice_formats::decode_cds_update(bytes)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The attributes the `cds` dataflow reads from an image; `D` only when `PNI` or `UAK` is
/// missing (spec/cds.md reads them from the blob then).
const CDS_ATTRIBUTES: &[&str] = &["U", "P", "C", "PNI", "UAK", "V", "D"];
/// As [`CDS_ATTRIBUTES`], for images that carry `PNI` and `UAK` themselves.
const CDS_ATTRIBUTES_WITHOUT_D: &[&str] = &["U", "P", "C", "PNI", "UAK", "V"];

/// The `dynamodb-stream` decoder of a source read only by `cds` nodes' `changes`.
///
/// It parses lazily and drops a MODIFY that provably changes nothing the dataflow reads —
/// rule 5 of spec/cds.md, most of real traffic — before any value is built; other records
/// are decoded with only the attributes the dataflow reads. The node applies every rule
/// itself too, so the outputs are the same with or without this decoder.
///
/// "Provably" means: `U`, `P`, `C`, `PNI` and `UAK` have byte-identical typed JSON in both
/// images (or `PNI`/`UAK` are absent from both and `D` is identical), and `U` and `P` are
/// present and valid. Anything less certain (say, the same bytes written with different
/// whitespace) is left to the node. A dropped record is not checked further: garbage in an
/// attribute both images share was reported when it was written.
pub struct CdsChangeDecoder;

impl Decode for CdsChangeDecoder {
    fn decode(&self, bytes: &[u8]) -> Result<Option<Value>, String> {
        let record = StreamRecordRef::parse(bytes).map_err(|e| e.to_string())?;
        let (old, new) = (record.old_image(), record.new_image());
        if record.event_name() == "MODIFY"
            && let (Some(old), Some(new)) = (&old, &new)
            && unchanged(old, new)
        {
            return Ok(None);
        }
        let needs_d = [&old, &new]
            .into_iter()
            .flatten()
            .any(|image| image.raw("PNI").is_none() || image.raw("UAK").is_none());
        let attributes = if needs_d {
            CDS_ATTRIBUTES
        } else {
            CDS_ATTRIBUTES_WITHOUT_D
        };
        record
            .to_value_projected(attributes)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// Whether two images of a MODIFY provably hold the same, valid, contact-discovery view.
fn unchanged(old: &ImageRef<'_>, new: &ImageRef<'_>) -> bool {
    let same = |attribute: &str| old.raw(attribute) == new.raw(attribute);
    if !["U", "P", "C", "PNI", "UAK"].into_iter().all(same) {
        return false;
    }
    let from_blob = old.raw("PNI").is_none() || old.raw("UAK").is_none();
    if from_blob && !same("D") {
        return false;
    }
    // A missing or invalid `U` or `P` is the node's to dead-letter, changed or not.
    let uuid_ok = matches!(old.get("U"), Ok(Some(Value::Bytes(b))) if b.len() == 16);
    let e164_ok = matches!(old.get("P"), Ok(Some(Value::Str(s))) if sluice_cds::is_e164(&s));
    uuid_ok && e164_ok
}

/// The encoder a sink uses for `format`; `None` writes the sink's own JSON.
pub fn encoder(format: Format) -> Option<Arc<dyn Encode>> {
    match format {
        Format::CdsUpdate => Some(Arc::new(CdsUpdateEncoder)),
        // Validation only lets sinks name formats that encode.
        Format::Json | Format::DynamodbStream | Format::DynamodbItem => None,
    }
}

/// Writes contact-discovery updates byte for byte as the original function did.
struct CdsUpdateEncoder;

impl Encode for CdsUpdateEncoder {
    fn encode(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), String> {
        let (_, bytes) = sluice_formats::encode_cds_update(&row.val).map_err(|e| e.to_string())?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    fn partition_key(&self, row: &Row) -> Option<String> {
        sluice_formats::cds_update_partition_key(&row.val).ok()
    }
}
