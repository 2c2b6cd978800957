//! `RealHcs`: the [`super::api::HcsApi`] over computecore.dll / computestorage.dll (Windows
//! only). Written in the next commit.
