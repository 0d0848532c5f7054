//! Generated gRPC code for `proto/`: the public `lethe.v1` API, the worker API, and the
//! googleapis messages they use.

#![allow(unreachable_pub, clippy::all)]

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
}

pub mod lethe {
    pub mod v1 {
        tonic::include_proto!("lethe.v1");
    }
}

/// gRPC status codes, which failures carry.
pub use tonic::Code;

pub mod failures;
pub mod reports;
pub mod tasks;

/// The encoded descriptors of every file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lethe_descriptor");
