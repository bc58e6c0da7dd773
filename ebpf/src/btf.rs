//! A small reader for the `.BTF` section of a compiled BPF object, and the layout check that
//! compares a C struct (as clang laid it out) with its Rust mirror. It only reads what the check
//! needs (struct members, sizes); it must not be used to load or relocate anything (aya does that).

use std::fmt;

use object::{Object as _, ObjectSection as _};

/// One field of a struct as a mirror declares it (or as BTF describes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// One way a C struct differs from its Rust mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutProblem {
    StructNotFound,
    TotalSize {
        c: usize,
        rust: usize,
    },
    Offset {
        field: String,
        c: usize,
        rust: usize,
    },
    Size {
        field: String,
        c: usize,
        rust: usize,
    },
    MissingInRust {
        field: String,
    },
    MissingInC {
        field: String,
    },
    /// A member whose size BTF cannot express in bytes (bitfield), which the ABI forbids.
    Bitfield {
        field: String,
    },
}

impl fmt::Display for LayoutProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StructNotFound => write!(f, "struct not found in the object's BTF"),
            Self::TotalSize { c, rust } => write!(f, "size is {c} bytes in C, {rust} in Rust"),
            Self::Offset { field, c, rust } => {
                write!(f, "field `{field}` is at offset {c} in C, {rust} in Rust")
            }
            Self::Size { field, c, rust } => {
                write!(f, "field `{field}` is {c} bytes in C, {rust} in Rust")
            }
            Self::MissingInRust { field } => write!(f, "field `{field}` exists only in C"),
            Self::MissingInC { field } => write!(f, "field `{field}` exists only in Rust"),
            Self::Bitfield { field } => {
                write!(f, "field `{field}` is a bitfield, which the map ABI does not allow")
            }
        }
    }
}

/// The C struct `c_name` does not match its Rust mirror; `problems` lists every difference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "layout of C `struct {c_name}` (ebpf/include/ferrule_abi.h) differs from its Rust mirror \
     (ebpf/src/abi.rs): {}; change both sides together",
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
)]
pub struct LayoutMismatch {
    pub c_name: String,
    pub problems: Vec<LayoutProblem>,
}

/// The object's BTF could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("not a readable ELF object: {0}")]
    Elf(String),
    #[error("the object has no .BTF section: compile it with `clang -g`")]
    NoBtf,
    #[error("malformed .BTF section: {0}")]
    Malformed(String),
}

/// Compares `struct c_name` in the BTF of `obj` (an ELF BPF object) with a mirror's `fields` and
/// `total_size`, reporting every differing field rather than the first.
pub fn check_struct(obj: &[u8], c_name: &str, fields: &[FieldLayout], total_size: usize) -> Result<(), CheckError> {
    let btf = Btf::from_object(obj)?;
    let mismatch = |problems| LayoutMismatch { c_name: c_name.to_owned(), problems };
    let Some(c_struct) = btf.struct_by_name(c_name)? else {
        return Err(mismatch(vec![LayoutProblem::StructNotFound]).into());
    };
    let problems = compare(&c_struct, fields, total_size);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(mismatch(problems).into())
    }
}

/// Why a layout check failed: the layouts differ, or the object could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Mismatch(#[from] LayoutMismatch),
    #[error(transparent)]
    Btf(#[from] BtfError),
}

/// A struct as BTF describes it, with member sizes resolved through typedefs and qualifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CStruct {
    pub size: usize,
    pub members: Vec<CMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CMember {
    pub name: String,
    pub offset: usize,
    /// `None` for a bitfield.
    pub size: Option<usize>,
}

fn compare(c: &CStruct, rust: &[FieldLayout], rust_size: usize) -> Vec<LayoutProblem> {
    let mut problems = Vec::new();
    if c.size != rust_size {
        problems.push(LayoutProblem::TotalSize { c: c.size, rust: rust_size });
    }
    for member in &c.members {
        let Some(field) = rust.iter().find(|f| f.name == member.name) else {
            problems.push(LayoutProblem::MissingInRust { field: member.name.clone() });
            continue;
        };
        let Some(c_size) = member.size else {
            problems.push(LayoutProblem::Bitfield { field: member.name.clone() });
            continue;
        };
        if member.offset != field.offset {
            problems.push(LayoutProblem::Offset { field: member.name.clone(), c: member.offset, rust: field.offset });
        }
        if c_size != field.size {
            problems.push(LayoutProblem::Size { field: member.name.clone(), c: c_size, rust: field.size });
        }
    }
    for field in rust {
        if !c.members.iter().any(|m| m.name == field.name) {
            problems.push(LayoutProblem::MissingInC { field: field.name.to_owned() });
        }
    }
    problems
}

// BTF kinds (include/uapi/linux/btf.h); only the ones whose records we must size or resolve.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const BTF_MAGIC: u16 = 0xeb9f;
/// Bytes of the fixed part of a type record: name_off, info, size/type.
const TYPE_HEADER_LEN: usize = 12;
/// BPF is a 64-bit target.
const POINTER_SIZE: usize = 8;

/// A parsed `.BTF` section: type records indexed by id (id 0 is `void`) and the string table.
#[derive(Debug)]
pub struct Btf<'a> {
    little_endian: bool,
    types: Vec<TypeRecord<'a>>,
    strings: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct TypeRecord<'a> {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` for sized kinds, `type` for referencing kinds.
    size_or_type: u32,
    /// The kind-specific data that follows the fixed header.
    extra: &'a [u8],
}

impl<'a> Btf<'a> {
    /// Finds and parses the `.BTF` section of an ELF object.
    pub fn from_object(obj: &'a [u8]) -> Result<Self, BtfError> {
        let file = object::File::parse(obj).map_err(|e| BtfError::Elf(e.to_string()))?;
        let section = file.section_by_name(".BTF").ok_or(BtfError::NoBtf)?;
        let data = section.data().map_err(|e| BtfError::Elf(e.to_string()))?;
        Self::parse(data)
    }

    /// Parses the raw bytes of a `.BTF` section.
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let malformed = |what: &str| BtfError::Malformed(what.to_owned());
        let magic = data.get(..2).ok_or_else(|| malformed("shorter than its magic"))?;
        let little_endian = match u16::from_le_bytes([magic[0], magic[1]]) {
            BTF_MAGIC => true,
            m if m.swap_bytes() == BTF_MAGIC => false,
            m => return Err(BtfError::Malformed(format!("bad magic {m:#06x}"))),
        };
        let reader = Reader { little_endian };
        // Header: magic u16, version u8, flags u8, hdr_len, type_off, type_len, str_off, str_len.
        let hdr_len = reader.u32_at(data, 4)? as usize;
        let field = |at| reader.u32_at(data, at).map(|v| v as usize);
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let body = data.get(hdr_len..).ok_or_else(|| malformed("header longer than section"))?;
        let type_data = slice(body, type_off, type_len).ok_or_else(|| malformed("type section out of bounds"))?;
        let strings = slice(body, str_off, str_len).ok_or_else(|| malformed("string section out of bounds"))?;

        let mut types =
            vec![TypeRecord { name_off: 0, kind: 0, vlen: 0, kind_flag: false, size_or_type: 0, extra: &[] }];
        let mut at = 0;
        while at < type_data.len() {
            let id = types.len();
            let name_off = reader.u32_at(type_data, at)?;
            let info = reader.u32_at(type_data, at + 4)?;
            let size_or_type = reader.u32_at(type_data, at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
                | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Malformed(format!("type [{id}] has unknown kind {other}"))),
            };
            let extra = slice(type_data, at + TYPE_HEADER_LEN, extra_len)
                .ok_or_else(|| BtfError::Malformed(format!("type [{id}] runs past the type section")))?;
            types.push(TypeRecord { name_off, kind, vlen, kind_flag: info >> 31 == 1, size_or_type, extra });
            at += TYPE_HEADER_LEN + extra_len;
        }
        Ok(Self { little_endian, types, strings })
    }

    /// The first struct named `name`, with its members resolved.
    pub fn struct_by_name(&self, name: &str) -> Result<Option<CStruct>, BtfError> {
        for id in 1..self.types.len() {
            let record = self.types[id];
            if record.kind == KIND_STRUCT && self.string(record.name_off)? == name {
                return self.struct_at(id).map(Some);
            }
        }
        Ok(None)
    }

    fn struct_at(&self, id: usize) -> Result<CStruct, BtfError> {
        let record = self.types[id];
        let reader = Reader { little_endian: self.little_endian };
        let mut members = Vec::with_capacity(record.vlen);
        for i in 0..record.vlen {
            let name_off = reader.u32_at(record.extra, i * 12)?;
            let member_type = reader.u32_at(record.extra, i * 12 + 4)?;
            let raw_offset = reader.u32_at(record.extra, i * 12 + 8)?;
            // With kind_flag the top 8 bits hold a bitfield size and the low 24 the bit offset.
            let (bit_offset, bitfield_size) =
                if record.kind_flag { (raw_offset & 0x00ff_ffff, raw_offset >> 24) } else { (raw_offset, 0) };
            let is_bitfield = bitfield_size != 0 || bit_offset % 8 != 0;
            members.push(CMember {
                name: self.string(name_off)?.to_owned(),
                offset: (bit_offset / 8) as usize,
                size: if is_bitfield { None } else { Some(self.size_of(member_type)?) },
            });
        }
        Ok(CStruct { size: record.size_or_type as usize, members })
    }

    /// Size in bytes of type `id`, looking through typedefs and qualifiers.
    fn size_of(&self, id: u32) -> Result<usize, BtfError> {
        let mut id = id;
        // A well-formed chain of typedefs/qualifiers is shorter than the type table.
        for _ in 0..self.types.len() {
            let record = self.record(id)?;
            match record.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    return Ok(record.size_or_type as usize)
                }
                KIND_PTR => return Ok(POINTER_SIZE),
                KIND_ARRAY => {
                    let reader = Reader { little_endian: self.little_endian };
                    let elem = reader.u32_at(record.extra, 0)?;
                    let nelems = reader.u32_at(record.extra, 8)? as usize;
                    return Ok(nelems * self.size_of(elem)?);
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type;
                }
                other => return Err(BtfError::Malformed(format!("type [{id}] of kind {other} has no size"))),
            }
        }
        Err(BtfError::Malformed(format!("type [{id}]: cyclic typedef chain")))
    }

    fn record(&self, id: u32) -> Result<TypeRecord<'a>, BtfError> {
        self.types
            .get(id as usize)
            .copied()
            .filter(|_| id != 0)
            .ok_or_else(|| BtfError::Malformed(format!("reference to missing type [{id}]")))
    }

    fn string(&self, off: u32) -> Result<&'a str, BtfError> {
        let bad = || BtfError::Malformed(format!("bad string offset {off}"));
        let tail = self.strings.get(off as usize..).ok_or_else(bad)?;
        let end = tail.iter().position(|&b| b == 0).ok_or_else(bad)?;
        std::str::from_utf8(&tail[..end]).map_err(|_| bad())
    }
}

#[derive(Clone, Copy)]
struct Reader {
    little_endian: bool,
}

impl Reader {
    fn u32_at(self, data: &[u8], at: usize) -> Result<u32, BtfError> {
        let bytes: [u8; 4] = slice(data, at, 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))?;
        Ok(if self.little_endian { u32::from_le_bytes(bytes) } else { u32::from_be_bytes(bytes) })
    }
}

fn slice(data: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    data.get(at..at.checked_add(len)?)
}

/// Names of every named struct in the object's BTF, so a test can find structs without a mirror.
pub fn struct_names(obj: &[u8]) -> Result<Vec<String>, BtfError> {
    let btf = Btf::from_object(obj)?;
    let mut names = Vec::new();
    for record in btf.types.iter().skip(1) {
        if record.kind == KIND_STRUCT && record.name_off != 0 {
            names.push(btf.string(record.name_off)?.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a little-endian `.BTF` section from type records and a string table.
    fn section(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(types);
        out.extend_from_slice(strings);
        out
    }

    fn record(name_off: u32, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [name_off, (kind << 24) | vlen, size_or_type] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in extra {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    // Strings: 0 "", 1 "u8", 4 "s", 6 "a", 8 "b", 10 "c", 12 "t8".
    const STRINGS: &[u8] = b"\0u8\0s\0a\0b\0c\0t8\0";

    fn sample() -> Vec<u8> {
        let mut types = Vec::new();
        // [1] INT u8, size 1 (encoding word: 8 bits).
        types.extend(record(1, KIND_INT, 0, 1, &[8]));
        // [2] CONST -> [3] TYPEDEF t8 -> [1]
        types.extend(record(0, KIND_CONST, 0, 3, &[]));
        types.extend(record(12, KIND_TYPEDEF, 0, 1, &[]));
        // [4] ARRAY of 6 x [1], index type [1]
        types.extend(record(0, KIND_ARRAY, 0, 0, &[1, 1, 6]));
        // [5] STRUCT s size 16: a @0 (const t8), b @8 (u8[6]), c @ bit 120 (ptr -> [6])
        types.extend(record(4, KIND_STRUCT, 3, 16, &[6, 2, 0, 8, 4, 64, 10, 6, 72]));
        // [6] PTR -> [1]
        types.extend(record(0, KIND_PTR, 0, 1, &[]));
        section(&types, STRINGS)
    }

    #[test]
    fn resolves_member_sizes_through_qualifiers_arrays_and_pointers() {
        let data = sample();
        let btf = Btf::parse(&data).unwrap();
        let s = btf.struct_by_name("s").unwrap().unwrap();
        assert_eq!(s.size, 16);
        let got: Vec<_> = s.members.iter().map(|m| (m.name.as_str(), m.offset, m.size)).collect();
        assert_eq!(got, vec![("a", 0, Some(1)), ("b", 8, Some(6)), ("c", 9, Some(8))]);
        assert!(btf.struct_by_name("nope").unwrap().is_none());
    }

    #[test]
    fn reports_every_differing_field() {
        let c = CStruct {
            size: 16,
            members: vec![
                CMember { name: "a".into(), offset: 0, size: Some(8) },
                CMember { name: "b".into(), offset: 8, size: Some(4) },
                CMember { name: "only_c".into(), offset: 12, size: Some(4) },
            ],
        };
        let rust = [
            FieldLayout { name: "a", offset: 0, size: 8 },
            FieldLayout { name: "b", offset: 12, size: 8 },
            FieldLayout { name: "only_rust", offset: 20, size: 4 },
        ];
        assert_eq!(
            compare(&c, &rust, 24),
            vec![
                LayoutProblem::TotalSize { c: 16, rust: 24 },
                LayoutProblem::Offset { field: "b".into(), c: 8, rust: 12 },
                LayoutProblem::Size { field: "b".into(), c: 4, rust: 8 },
                LayoutProblem::MissingInRust { field: "only_c".into() },
                LayoutProblem::MissingInC { field: "only_rust".into() },
            ]
        );
    }

    #[test]
    fn rejects_truncated_and_foreign_sections() {
        let data = sample();
        assert!(matches!(Btf::parse(&data[..data.len() - 20]), Err(BtfError::Malformed(_))));
        assert!(matches!(Btf::parse(b"\x7fELF"), Err(BtfError::Malformed(_))));
        assert!(matches!(Btf::from_object(&data), Err(BtfError::Elf(_))));
    }
}
