//! Identifier newtypes. Every id is a UUIDv7 (time-ordered, so B-tree inserts stay local) wrapped in its own
//! type, so a `FileId` can never be passed where a `WorkspaceId` is expected. Chunk ids are different: they are
//! content addresses (keyed BLAKE3), 32 bytes shown as hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            /// Wraps an existing UUID (from storage).
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            /// The underlying UUID (for binding in SQL).
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// An account.
    UserId
);
uuid_id!(
    /// A workspace (a shared folder tree with its own keys, members and journal).
    WorkspaceId
);
uuid_id!(
    /// A file's identity across versions, renames and trash.
    FileId
);
uuid_id!(
    /// One committed version of a file.
    VersionId
);
uuid_id!(
    /// A login session, i.e. a device.
    SessionId
);
uuid_id!(
    /// One audit row.
    AuditId
);
uuid_id!(
    /// A share link (its public handle; the link's token is a separate secret).
    ShareId
);

/// Content address of a chunk: keyed BLAKE3 of its plaintext under the workspace's chunk-id key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = String, example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    ///
    /// # Errors
    /// When the text is not exactly 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, ChunkIdError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ChunkIdError)?;
        Ok(Self(out))
    }
}

/// A chunk id that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("a chunk id must be 64 hexadecimal characters")]
pub struct ChunkIdError;

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..12])
    }
}

impl FromStr for ChunkId {
    type Err = ChunkIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_json_and_text() {
        let id = WorkspaceId::new();
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{id}\""));
        let back: WorkspaceId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        assert_eq!(id.to_string().parse::<WorkspaceId>().expect("parse"), id);
    }

    #[test]
    fn chunk_id_hex_is_strict() {
        let id = ChunkId([7u8; 32]);
        assert_eq!(ChunkId::from_hex(&id.to_hex()).expect("hex"), id);
        assert!(ChunkId::from_hex("abc").is_err());
        assert!(ChunkId::from_hex(&"zz".repeat(32)).is_err());
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(serde_json::from_str::<ChunkId>(&json).expect("back"), id);
    }
}
