//! The storage pool allocator (spa).
pub mod device;
pub mod error;
pub mod limits;
pub mod raidz;
pub mod testdev;
pub(crate) mod format {
    pub const LABEL_MAGIC: &[u8] = b"CSTORLB1";
}
