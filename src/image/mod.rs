//! Images: the codec the upload edge and the inference worker share
//! (sniffed type, header-checked size, decode under limits, scale, pad,
//! crop, encode). Pure CPU work; callers run it on the blocking pool.

pub mod codec;
