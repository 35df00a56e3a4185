//! The gRPC codec of `tether.sync.v1`: prost's encoding with smaller buffers.
//!
//! tonic starts every stream with an 8 KiB encode buffer and an 8 KiB decode buffer. A hub holds
//! one stream per remote, and most of what crosses it is an ACK or a snapshot of a few hundred
//! bytes, so at 10,000 remotes those two buffers were 160 MiB of mostly empty heap (heaptrack, the
//! fan-out benchmark at 1,000 streams: 16 KiB of each stream's heap). Both buffers grow to the
//! largest message they carry, so a large snapshot costs what it needs and no more.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// How much encoded data the encoder gathers before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers; the generated client and server use it
/// (`codec_path` in build.rs).
#[derive(Debug, Clone, Copy)]
pub struct SyncCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SyncCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SyncCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
