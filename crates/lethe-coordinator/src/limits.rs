//! The limits a client can plan for, in one place; `docs/service.md` lists them.

use std::time::Duration;

/// The largest request message any call accepts. The largest legitimate one, a deletion
/// request of [`MAX_FORGET`] indices, is at most 10 bytes per index (a varint), 1 MB.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Training indices one deletion request may name.
pub const MAX_FORGET: usize = 100_000;
/// Operations in one ListOperations page, and the size of a page that asks for none.
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The longest WaitOperation waits, and how long a watch waits between reads at most.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long one WatchOperation stream lasts: a watch of an operation that is still running
/// then ends (OK), and the client watches again. It bounds what a stream left open holds.
pub const MAX_WATCH: Duration = Duration::from_secs(3600);
/// Bytes of checkpoint in one DownloadModelVersion message.
pub const DOWNLOAD_CHUNK_BYTES: usize = 1 << 20;
/// How long a signed download URL works when the caller does not say, and at most.
pub const DEFAULT_URL_LIFETIME: Duration = Duration::from_secs(15 * 60);
pub const MAX_URL_LIFETIME: Duration = Duration::from_secs(3600);
