//! Rust mirrors of the structs in `ebpf/include/ferrule_abi.h`, one per C struct, declared through
//! `abi_structs!` so each mirror also describes its own layout for the BTF check
//! (`tests/abi_layout.rs`). Only layout lives here: no map access, no logic.

use core::mem::size_of;

use crate::btf::FieldLayout;

/// The layout a Rust mirror claims for its C struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorLayout {
    /// The C struct's tag, without `struct`.
    pub c_name: &'static str,
    pub fields: Vec<FieldLayout>,
    pub size: usize,
}

/// Size of a field, named by a projection closure (`|s: &T| &s.field`), without needing a value.
const fn field_size<T, F>(_project: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

const fn assert_pod<T: aya::Pod>() {}

/// Declares `#[repr(C)]` mirrors and `mirrors()`, the list the layout test walks.
///
/// Every field type must be `aya::Pod`, and the struct may not contain implicit padding (checked
/// at compile time), which is what makes the `Pod` impl sound: aya copies these values to and
/// from the kernel as raw bytes, and padding bytes would be uninitialised.
macro_rules! abi_structs {
    ($(
        $(#[$meta:meta])*
        $c_name:literal => pub struct $ty:ident { $($(#[$fmeta:meta])* pub $field:ident: $fty:ty),* $(,)? }
    )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $ty { $($(#[$fmeta])* pub $field: $fty),* }

            const _: () = {
                $(assert_pod::<$fty>();)*
                assert!(
                    size_of::<$ty>() == 0 $(+ size_of::<$fty>())*,
                    concat!(stringify!($ty), " has implicit padding: add explicit pad fields on both sides")
                );
            };

            // SAFETY: `$ty` is `repr(C)`, every field is `Pod` (checked above), and it has no
            // padding (checked above), so every byte is initialised and any bit pattern is valid.
            unsafe impl aya::Pod for $ty {}
        )*

        /// Every mirror with the layout it claims; the layout test checks each against BTF.
        pub fn mirrors() -> Vec<MirrorLayout> {
            vec![$(
                MirrorLayout {
                    c_name: $c_name,
                    fields: vec![$(FieldLayout {
                        name: stringify!($field),
                        offset: core::mem::offset_of!($ty, $field),
                        size: field_size(|s: &$ty| &s.$field),
                    }),*],
                    size: size_of::<$ty>(),
                },
            )*]
        }
    };
}

abi_structs! {
    /// Value of map `fr_iface_stats` (one per CPU), keyed by ingress ifindex (`u32`).
    "fr_iface_stats" => pub struct IfaceStats {
        pub packets: u64,
        pub bytes: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_describe_their_own_fields_in_declaration_order() {
        let stats = mirrors().into_iter().find(|m| m.c_name == "fr_iface_stats").expect("IfaceStats is listed");
        assert_eq!(stats.size, 16);
        assert_eq!(
            stats.fields,
            vec![
                FieldLayout { name: "packets", offset: 0, size: 8 },
                FieldLayout { name: "bytes", offset: 8, size: 8 },
            ]
        );
    }
}
