//! Generated code only: the prost messages and tonic servers/clients of every package under
//! `proto/commerce`, and the encoded file descriptor set they were generated from.
//!
//! Hand-written logic does not belong here; the runtime that reads the descriptor set (custom
//! options, JSON transcoding, validation) lives in `crates/platform` and `crates/connect`.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// The encoded `google.protobuf.FileDescriptorSet` of every file under `proto/commerce`, with
/// imports (well-known types, `buf/validate`) and source info (comments, line numbers).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/commerce_descriptor.binpb"));

/// The descriptor pool decoded from [`FILE_DESCRIPTOR_SET`]; generated messages reflect against it.
pub static DESCRIPTOR_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set embedded at build time decodes")
});

/// Generated packages, one module per protobuf package.
pub mod commerce {
    /// `commerce.api.v1`: custom options that configure the runtime.
    pub mod api {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.api.v1.rs"));
        }
    }
    /// `commerce.common.v1`: money, addresses, error reasons, the event envelope.
    pub mod common {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.common.v1.rs"));
        }
    }
    /// `commerce.checkout.v1`: menu, carts, quotes, orders.
    pub mod checkout {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.checkout.v1.rs"));
        }
    }
    /// `commerce.loyalty.v1`: members, points ledger, rewards, program.
    pub mod loyalty {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.loyalty.v1.rs"));
        }
    }
    /// `commerce.psp.v1`: the PSP simulator's internal API (not part of the public contract).
    pub mod psp {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.psp.v1.rs"));
        }
    }
    /// `commerce.subscriptions.v1`: plans, subscriptions, invoices, the tenant clock.
    pub mod subscriptions {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/commerce.subscriptions.v1.rs"));
        }
    }
}
