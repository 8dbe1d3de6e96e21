//! Delta uploads against a real server: signatures of the bytes a new chunk replaces, chunks rebuilt from
//! deltas and checked against their ids, and what happens to deltas that are wrong, malformed or based on
//! chunks the workspace does not hold.

#[allow(dead_code, reason = "helpers shared with other test files")]
mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cloudsync_crypto::keyed_hash;
use cloudsync_sdk::{ChunkDelta, ErrorKind};
use cloudsync_testkit::{TestServer, noise};
use cloudsync_types::api::DeltaBaseRef;
use cloudsync_types::{ChunkId, WsPath};
use fast_rsync::{Signature, diff};

fn delta_against(signature_b64: &str, data: &[u8]) -> Vec<u8> {
    let sig = Signature::deserialize(STANDARD.decode(signature_b64).expect("base64")).expect("signature");
    let mut out = Vec::new();
    diff(&sig.index(), data, &mut out).expect("diff");
    out
}

#[tokio::test]
async fn a_chunk_is_rebuilt_from_a_delta_and_wrong_or_foreign_deltas_store_nothing() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let other = common::workspace(&a, "Other").await;
    let files = a.files(ws.id);
    let old = noise(64 * 1024, 1);
    let v1 = common::put_file(&a, ws.id, "doc.bin", &old, None).await.expect("v1");
    common::put_file(&a, other.id, "elsewhere.bin", &noise(8192, 5), None).await.expect("other");
    let key = cloudsync_crypto::SecretKey::from_hex(&a.workspaces().keys(ws.id).await.expect("keys").chunk_id_key)
        .expect("key");
    let old_id = ChunkId(keyed_hash(&key, &old));

    let mut new = old.clone();
    new[20_000..21_024].copy_from_slice(&noise(1024, 2));
    let new_id = ChunkId(keyed_hash(&key, &new));
    let at = |path: &str, offset: u64, len: usize| DeltaBaseRef {
        path: WsPath::parse(path).expect("path"),
        version: v1.version,
        offset,
        len: len as u32,
    };

    // The base is the old chunk under the same bytes; unknown files and offsets past the end have none.
    let sigs = files
        .chunk_signatures(&[at("doc.bin", 0, new.len()), at("nope.bin", 0, 10), at("doc.bin", 70_000, 100)])
        .await
        .expect("signatures");
    let sig = sigs[0].clone().expect("a base for the edited chunk");
    assert_eq!(sig.bases, vec![old_id]);
    assert!(sigs[1].is_none() && sigs[2].is_none(), "{sigs:?}");
    assert!(sig.signature.len() < old.len() / 10, "a signature of {} bytes", sig.signature.len());

    // A delta that rebuilds the new chunk is a few KiB and stores it.
    let delta = delta_against(&sig.signature, &new);
    assert!(delta.len() < 3 * 1024, "{} bytes of delta for a 1 KiB edit", delta.len());
    let res = files
        .upload_deltas(vec![ChunkDelta { id: new_id, bases: vec![old_id], delta: delta.clone() }])
        .await
        .expect("deltas");
    assert_eq!((res.stored, res.failed.len()), (1, 0), "{res:?}");
    assert_eq!(files.get_chunk(new_id).await.expect("rebuilt"), new);

    // Sent again, the chunk is already held: counted as present, not rebuilt.
    let res = files
        .upload_deltas(vec![ChunkDelta { id: new_id, bases: vec![old_id], delta: delta.clone() }])
        .await
        .expect("again");
    assert_eq!((res.stored, res.already_present, res.failed.len()), (0, 1, 0), "{res:?}");

    // A request may carry at most 4096 deltas, however small.
    let flood: Vec<ChunkDelta> = (0..4097u32)
        .map(|n| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            ChunkDelta { id: ChunkId(id), bases: vec![old_id], delta: b"x".to_vec() }
        })
        .collect();
    let err = files.upload_deltas(flood).await.expect_err("too many deltas");
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");

    // A delta under a wrong id, or one that is garbage, is refused chunk by chunk; nothing is stored.
    let claimed = ChunkId(keyed_hash(&key, b"something else"));
    let garbage = ChunkId(keyed_hash(&key, b"garbage"));
    let res = files
        .upload_deltas(vec![
            ChunkDelta { id: claimed, bases: vec![old_id], delta: delta.clone() },
            ChunkDelta { id: garbage, bases: vec![old_id], delta: b"not a delta".to_vec() },
        ])
        .await
        .expect("deltas");
    assert_eq!((res.stored, res.failed.clone()), (0, vec![claimed, garbage]), "{res:?}");
    assert_eq!(files.missing_chunks(&[claimed, garbage]).await.expect("missing"), vec![claimed, garbage]);

    // A base the workspace does not hold (another workspace's chunk) is refused, and nothing is stored.
    let foreign = a.files(other.id).manifest(&WsPath::parse("elsewhere.bin").expect("p"), None).await.expect("m");
    let foreign = foreign.manifest.chunks[0].id;
    let err = files
        .upload_deltas(vec![ChunkDelta { id: claimed, bases: vec![foreign], delta }])
        .await
        .expect_err("foreign base");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(files.missing_chunks(&[claimed]).await.expect("missing"), vec![claimed]);

    // Reading signatures is reading the file: audited as an access to that version.
    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    let audit = store.audit_chain(&ws.id.to_string(), 0, 1000).await.expect("audit");
    let accesses: Vec<_> = audit
        .iter()
        .filter(|r| r.row.event == cloudsync_types::AuditEvent::FileAccess && r.row.details["via"] == "delta signature")
        .map(|r| r.row.target.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(accesses, ["doc.bin"], "one file.access row for the version whose signature was read");
    srv.stop().await;
}
