//! cstor-csi: the CSI driver `cstor.csi.openebs.io`.
//!
//! Owns: the CSI v1.12 wire types and gRPC service traits, generated at build time
//! from `proto/csi.proto` with protox (no `protoc`). The Identity and Controller
//! services are not written yet; the CVC they will create is built by
//! `cstor_controller::provision::cvc_object`, the same function the PVC path uses.
//! Never: edit the generated code or renumber a proto field (wire format).
pub mod pb {
    //! Generated CSI v1 messages, clients and servers.
    #![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
    tonic::include_proto!("csi.v1");
}
