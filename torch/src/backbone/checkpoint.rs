//! Reads PyTorch checkpoints (what `torch.save(model.state_dict(), f)` writes) into named tensors
//! without Python, and converts them to safetensors so later loads skip the pickle entirely.
//!
//! Both layouts of `torch.save` are understood:
//! - the zip layout (torch >= 1.6): `<archive>/data.pkl` holds the state dict and each tensor
//!   storage is the raw file `<archive>/data/<key>`;
//! - the legacy layout: a sequence of pickles (magic number, protocol version, system info, the
//!   state dict, the list of storage keys) followed, for every storage in that list's order, by
//!   an 8-byte little-endian element count and the raw little-endian data.
//!
//! In both, a tensor is pickled as a call `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, ...)` whose storage is a persistent id `('storage', torch.<Type>Storage, key, location,
//! numel)`. Tensors may be views with any strides and offset into a shared storage (TF ports, for
//! one, store transposed weights), so each tensor is cut out of its storage with its own strides
//! and copied to a contiguous tensor.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use super::pickle::{self, Value};
use super::BackboneError;

/// Tensors by name, in the checkpoint's order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// The batch-norm counter torch keeps beside the running statistics: an integer that inference
/// never reads, dropped when converting.
pub const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// The first pickle of a legacy checkpoint is this number.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The second pickle of a legacy checkpoint: the only format version torch ever wrote.
const LEGACY_PROTOCOL_VERSION: i128 = 1001;

/// Reads a weights file: `.safetensors` by extension, anything else as a torch checkpoint.
pub fn read_weights(path: &Path) -> Result<NamedTensors, BackboneError> {
    if is_safetensors(path) {
        read_safetensors(path)
    } else {
        read_pth(path)
    }
}

/// Whether `path` names a safetensors file (by its extension).
pub fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("safetensors"))
}

/// Reads a safetensors file as written by [`convert_to_safetensors`] (or by Python's safetensors).
pub fn read_safetensors(path: &Path) -> Result<NamedTensors, BackboneError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(BackboneError::io(path, e));
    }
    Tensor::read_safetensors(path).map_err(|e| BackboneError::torch(path, e))
}

/// Reads a torch checkpoint in either layout. Floating-point tensors (float, double, half,
/// bfloat16) come back as f32; integer and bool tensors as i64. All are contiguous CPU tensors.
pub fn read_pth(path: &Path) -> Result<NamedTensors, BackboneError> {
    let mut file = File::open(path).map_err(|e| BackboneError::io(path, e))?;
    let mut head = [0u8; 4];
    let read = read_up_to(&mut file, &mut head).map_err(|e| BackboneError::io(path, e))?;
    if read == 4 && head == *b"PK\x03\x04" {
        return read_zip(path, file);
    }
    // A pickle of protocol 2 or later starts with the PROTO opcode.
    if read >= 1 && head[0] == 0x80 {
        drop(file);
        let data = std::fs::read(path).map_err(|e| BackboneError::io(path, e))?;
        return read_legacy(path, &data);
    }
    Err(BackboneError::format(
        path,
        "not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)",
    ))
}

/// Converts the torch checkpoint `pth` to the safetensors file `out`: every tensor as F32, the
/// batch-norm `num_batches_tracked` counters left out.
pub fn convert_to_safetensors(pth: &Path, out: &Path) -> Result<(), BackboneError> {
    let tensors = read_pth(pth)?;
    write_safetensors(&tensors, out)
}

/// Writes `tensors` to the safetensors file `out` as F32, without `num_batches_tracked`.
pub fn write_safetensors(tensors: &[(String, Tensor)], out: &Path) -> Result<(), BackboneError> {
    let kept: Vec<(&str, Tensor)> = tensors
        .iter()
        .filter(|(name, _)| !is_num_batches_tracked(name))
        .map(|(name, tensor)| (name.as_str(), tensor.to_kind(Kind::Float).contiguous()))
        .collect();
    Tensor::write_safetensors(&kept, out).map_err(|e| BackboneError::torch(out, e))
}

/// Whether `name` is a batch-norm step counter.
pub fn is_num_batches_tracked(name: &str) -> bool {
    name.rsplit('.').next() == Some(NUM_BATCHES_TRACKED)
}

/// Reads into `buf` until it is full or the file ends; returns how much was read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The element types of torch storages (`torch.FloatStorage` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageDtype {
    Float,
    Double,
    Half,
    BFloat16,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
}

impl StorageDtype {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => StorageDtype::Float,
            "DoubleStorage" => StorageDtype::Double,
            "HalfStorage" => StorageDtype::Half,
            "BFloat16Storage" => StorageDtype::BFloat16,
            "LongStorage" => StorageDtype::Long,
            "IntStorage" => StorageDtype::Int,
            "ShortStorage" => StorageDtype::Short,
            "CharStorage" => StorageDtype::Char,
            "ByteStorage" => StorageDtype::Byte,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// The kind of the raw storage data.
    fn kind(self) -> Kind {
        match self {
            StorageDtype::Float => Kind::Float,
            StorageDtype::Double => Kind::Double,
            StorageDtype::Half => Kind::Half,
            StorageDtype::BFloat16 => Kind::BFloat16,
            StorageDtype::Long => Kind::Int64,
            StorageDtype::Int => Kind::Int,
            StorageDtype::Short => Kind::Int16,
            StorageDtype::Char => Kind::Int8,
            StorageDtype::Byte => Kind::Uint8,
            StorageDtype::Bool => Kind::Bool,
        }
    }

    /// The kind tensors of this storage are handed out as.
    fn output_kind(self) -> Kind {
        match self {
            StorageDtype::Float
            | StorageDtype::Double
            | StorageDtype::Half
            | StorageDtype::BFloat16 => Kind::Float,
            _ => Kind::Int64,
        }
    }

    fn element_size(self) -> usize {
        self.kind().elt_size_in_bytes()
    }
}

/// A storage as the pickle's persistent ids describe it.
#[derive(Debug, Clone)]
struct StorageInfo {
    dtype: StorageDtype,
    /// Elements the persistent id announces (the data itself is authoritative).
    numel: i64,
}

/// One tensor of the state dict: where its elements are.
#[derive(Debug, Clone)]
struct TensorEntry {
    name: String,
    storage_key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The state dict's tensors and the storages they refer to.
#[derive(Debug, Default)]
struct StateDict {
    tensors: Vec<TensorEntry>,
    storages: HashMap<String, StorageInfo>,
}

/// Turns the unpickled state dict into tensor entries.
fn parse_state_dict(path: &Path, root: &Value) -> Result<StateDict, BackboneError> {
    let Value::Dict(entries) = root else {
        return Err(BackboneError::format(
            path,
            format!("expected a state dict, found a {}", root.kind_name()),
        ));
    };
    // Training checkpoints often wrap the state dict as {"state_dict": {...}, "epoch": ...}.
    if let Some((_, inner @ Value::Dict(_))) = entries
        .iter()
        .find(|(key, _)| *key == Value::Str("state_dict".to_string()))
    {
        return parse_state_dict(path, inner);
    }
    let mut state = StateDict::default();
    for (key, value) in entries {
        let Value::Str(name) = key else {
            return Err(BackboneError::format(
                path,
                format!("state dict key is a {}, not a string", key.kind_name()),
            ));
        };
        let entry = parse_tensor(path, name, value, &mut state.storages)?;
        state.tensors.push(entry);
    }
    Ok(state)
}

/// Interprets the pickled call that rebuilds tensor `name`.
fn parse_tensor(
    path: &Path,
    name: &str,
    value: &Value,
    storages: &mut HashMap<String, StorageInfo>,
) -> Result<TensorEntry, BackboneError> {
    let bad = |what: String| BackboneError::format(path, format!("tensor `{name}`: {what}"));
    let Value::Call { callable, args, .. } = value else {
        return Err(bad(format!(
            "expected a tensor, found a {}",
            value.kind_name()
        )));
    };
    // nn.Parameter objects pickle as a wrapper around the tensor.
    if callable.is_global("torch._utils", "_rebuild_parameter")
        || callable.is_global("torch._utils", "_rebuild_parameter_with_state")
    {
        let inner = args
            .first()
            .ok_or_else(|| bad("parameter without data".to_string()))?;
        return parse_tensor(path, name, inner, storages);
    }
    if !(callable.is_global("torch._utils", "_rebuild_tensor_v2")
        || callable.is_global("torch._utils", "_rebuild_tensor"))
    {
        return Err(bad(format!(
            "unsupported tensor constructor ({})",
            callable.kind_name()
        )));
    }
    let [storage, offset, size, stride, ..] = args.as_slice() else {
        return Err(bad(format!(
            "tensor rebuild call has {} arguments, expected at least 4",
            args.len()
        )));
    };
    let (storage_key, info, view_offset) = parse_storage(storage).map_err(bad)?;
    match storages.get(&storage_key) {
        Some(known) if known.dtype != info.dtype => {
            return Err(bad(format!(
                "storage `{storage_key}` is used as both {:?} and {:?}",
                known.dtype, info.dtype
            )))
        }
        Some(_) => {}
        None => {
            storages.insert(storage_key.clone(), info);
        }
    }
    let offset = as_i64(offset).ok_or_else(|| bad("storage offset is not an integer".into()))?;
    let size = int_tuple(size).ok_or_else(|| bad("size is not a tuple of integers".into()))?;
    let stride =
        int_tuple(stride).ok_or_else(|| bad("stride is not a tuple of integers".into()))?;
    if size.len() != stride.len() {
        return Err(bad(format!(
            "size {size:?} and stride {stride:?} differ in length"
        )));
    }
    Ok(TensorEntry {
        name: name.to_string(),
        storage_key,
        offset: offset + view_offset,
        size,
        stride,
    })
}

/// Reads a storage persistent id: `('storage', torch.<Type>Storage, key, location, numel)`, with
/// a sixth element in legacy files that is `None` or, for a view into another storage,
/// `(view_key, offset, view_numel)`. Returns the key, the storage and the view's offset.
fn parse_storage(value: &Value) -> Result<(String, StorageInfo, i64), String> {
    let Value::Persistent(id) = value else {
        return Err(format!(
            "expected a storage reference, found a {}",
            value.kind_name()
        ));
    };
    let Value::Tuple(fields) = id.as_ref() else {
        return Err(format!("storage id is a {}, not a tuple", id.kind_name()));
    };
    let [Value::Str(tag), class, Value::Str(key), _location, numel, rest @ ..] = fields.as_slice()
    else {
        return Err(format!("malformed storage id {fields:?}"));
    };
    if tag != "storage" {
        return Err(format!("unsupported persistent id `{tag}`"));
    }
    let dtype = match class {
        Value::Global { module, name } if module == "torch" => {
            StorageDtype::from_storage_class(name)
                .ok_or_else(|| format!("unsupported storage type torch.{name}"))?
        }
        other => return Err(format!("unsupported storage type {}", other.kind_name())),
    };
    let numel = as_i64(numel).ok_or("storage size is not an integer")?;
    let view_offset = match rest.first() {
        None | Some(Value::None) => 0,
        Some(Value::Tuple(view)) => match view.as_slice() {
            [_, offset, _] => as_i64(offset).ok_or("storage view offset is not an integer")?,
            _ => return Err(format!("malformed storage view {view:?}")),
        },
        Some(other) => return Err(format!("malformed storage view ({})", other.kind_name())),
    };
    Ok((key.clone(), StorageInfo { dtype, numel }, view_offset))
}

fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Int(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn int_tuple(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_i64).collect(),
        _ => None,
    }
}

/// Builds the storage tensor of `key` from its raw little-endian bytes (exactly `numel`
/// elements).
fn storage_tensor(
    path: &Path,
    key: &str,
    dtype: StorageDtype,
    bytes: &[u8],
) -> Result<Tensor, BackboneError> {
    if cfg!(target_endian = "big") {
        return Err(BackboneError::format(
            path,
            "reading torch checkpoints needs a little-endian machine",
        ));
    }
    let element = dtype.element_size();
    if !bytes.len().is_multiple_of(element) {
        return Err(BackboneError::format(
            path,
            format!(
                "storage `{key}` has {} bytes, not a multiple of its {element}-byte elements",
                bytes.len()
            ),
        ));
    }
    let numel = (bytes.len() / element) as i64;
    Tensor::f_from_data_size(bytes, &[numel], dtype.kind())
        .map_err(|e| BackboneError::torch(path, e))
}

/// Cuts every tensor out of its storage (honouring offset and strides) into contiguous tensors of
/// the output kind.
fn materialize(
    path: &Path,
    state: &StateDict,
    storages: &HashMap<String, Tensor>,
) -> Result<NamedTensors, BackboneError> {
    let mut tensors = Vec::with_capacity(state.tensors.len());
    for entry in &state.tensors {
        let bad =
            |what: String| BackboneError::format(path, format!("tensor `{}`: {what}", entry.name));
        let storage = storages
            .get(&entry.storage_key)
            .ok_or_else(|| bad(format!("storage `{}` is missing", entry.storage_key)))?;
        let storage_numel = storage.size()[0];
        // as_strided trusts its arguments, so check that every element lies inside the storage.
        if entry.offset < 0 || entry.size.iter().chain(&entry.stride).any(|&v| v < 0) {
            return Err(bad(format!(
                "negative offset, size or stride (offset {}, size {:?}, stride {:?})",
                entry.offset, entry.size, entry.stride
            )));
        }
        let empty = entry.size.contains(&0);
        if !empty {
            let last = entry.size.iter().zip(&entry.stride).try_fold(
                entry.offset,
                |acc, (&size, &stride)| {
                    (size - 1)
                        .checked_mul(stride)
                        .and_then(|s| acc.checked_add(s))
                },
            );
            match last {
                Some(last) if last < storage_numel => {}
                _ => {
                    return Err(bad(format!(
                        "size {:?}, stride {:?} and offset {} reach past the {} elements of \
                         storage `{}`",
                        entry.size, entry.stride, entry.offset, storage_numel, entry.storage_key
                    )))
                }
            }
        }
        let dtype = state.storages[&entry.storage_key].dtype;
        let tensor = if empty {
            Tensor::zeros(
                entry.size.as_slice(),
                (dtype.output_kind(), tch::Device::Cpu),
            )
        } else {
            storage
                .f_as_strided(entry.size.as_slice(), entry.stride.as_slice(), entry.offset)
                .and_then(|view| view.f_contiguous())
                .and_then(|t| t.f_to_kind(dtype.output_kind()))
                .map_err(|e| BackboneError::torch(path, e))?
        };
        tensors.push((entry.name.clone(), tensor));
    }
    Ok(tensors)
}

/// Reads the legacy (pre-zip) layout from the whole file `data`.
fn read_legacy(path: &Path, data: &[u8]) -> Result<NamedTensors, BackboneError> {
    let load = |at: usize, what: &str| {
        pickle::load(data, at)
            .map_err(|e| BackboneError::format(path, format!("reading the {what}: {e}")))
    };
    let (magic, pos) = load(0, "magic number")?;
    if magic != Value::Int(LEGACY_MAGIC) {
        return Err(BackboneError::format(
            path,
            "not a PyTorch checkpoint (a pickle without torch's magic number)",
        ));
    }
    let (version, pos) = load(pos, "format version")?;
    if version != Value::Int(LEGACY_PROTOCOL_VERSION) {
        return Err(BackboneError::format(
            path,
            format!("unsupported legacy checkpoint version {version:?}"),
        ));
    }
    let (sys_info, pos) = load(pos, "system info")?;
    if let Value::Dict(entries) = &sys_info {
        let big_endian = entries.iter().any(|(key, value)| {
            *key == Value::Str("little_endian".to_string()) && *value == Value::Bool(false)
        });
        if big_endian {
            return Err(BackboneError::format(
                path,
                "written on a big-endian machine, which is not supported",
            ));
        }
    }
    let (root, pos) = load(pos, "state dict")?;
    let (keys, mut pos) = load(pos, "storage list")?;
    let state = parse_state_dict(path, &root)?;
    let Value::List(keys) = keys else {
        return Err(BackboneError::format(
            path,
            format!("storage list is a {}, not a list", keys.kind_name()),
        ));
    };

    let mut storages = HashMap::new();
    for key in &keys {
        let Value::Str(key) = key else {
            return Err(BackboneError::format(path, "storage key is not a string"));
        };
        let info = state.storages.get(key).ok_or_else(|| {
            BackboneError::format(
                path,
                format!("storage `{key}` is listed but no tensor uses it (its type is unknown)"),
            )
        })?;
        let truncated = || {
            BackboneError::format(
                path,
                format!("file truncated in the data of storage `{key}` (byte offset {pos})"),
            )
        };
        let count_bytes = data.get(pos..pos + 8).ok_or_else(truncated)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(count_bytes);
        let numel = u64::from_le_bytes(raw);
        if numel != info.numel as u64 {
            return Err(BackboneError::format(
                path,
                format!(
                    "storage `{key}` holds {numel} elements but its tensors announce {}",
                    info.numel
                ),
            ));
        }
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(info.dtype.element_size()))
            .ok_or_else(truncated)?;
        let start = pos + 8;
        let bytes = start
            .checked_add(len)
            .and_then(|end| data.get(start..end))
            .ok_or_else(truncated)?;
        storages.insert(key.clone(), storage_tensor(path, key, info.dtype, bytes)?);
        pos = start + len;
    }
    materialize(path, &state, &storages)
}

/// Reads the zip layout.
fn read_zip(path: &Path, file: File) -> Result<NamedTensors, BackboneError> {
    let zip_error = |e: zip::result::ZipError| BackboneError::format(path, format!("zip: {e}"));
    let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
    // The archive's top folder is named after the file it was first saved as, so find it.
    let prefix = archive
        .file_names()
        .find_map(|name| {
            name.strip_suffix("data.pkl")
                .filter(|prefix| prefix.is_empty() || prefix.matches('/').count() == 1)
                .map(str::to_string)
        })
        .ok_or_else(|| BackboneError::format(path, "zip archive without a data.pkl"))?;
    let mut read_entry = |name: &str| -> Result<Vec<u8>, BackboneError> {
        let mut entry = archive
            .by_name(name)
            .map_err(|e| BackboneError::format(path, format!("zip entry `{name}`: {e}")))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| BackboneError::io(path, e))?;
        Ok(bytes)
    };

    let byteorder_name = format!("{prefix}byteorder");
    if let Ok(byteorder) = read_entry(&byteorder_name) {
        if byteorder.trim_ascii() != b"little" {
            return Err(BackboneError::format(
                path,
                format!(
                    "storages are {}-endian, only little-endian is supported",
                    String::from_utf8_lossy(&byteorder)
                ),
            ));
        }
    }
    let pickle_bytes = read_entry(&format!("{prefix}data.pkl"))?;
    let (root, _) = pickle::load(&pickle_bytes, 0)
        .map_err(|e| BackboneError::format(path, format!("data.pkl: {e}")))?;
    let state = parse_state_dict(path, &root)?;

    let mut storages = HashMap::new();
    for (key, info) in &state.storages {
        let bytes = read_entry(&format!("{prefix}data/{key}"))?;
        let tensor = storage_tensor(path, key, info.dtype, &bytes)?;
        storages.insert(key.clone(), tensor);
    }
    materialize(path, &state, &storages)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// Writes pickles the way `torch.save` does (protocol 2), for building test checkpoints.
    #[derive(Default)]
    struct PickleWriter {
        out: Vec<u8>,
    }

    impl PickleWriter {
        fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.out.extend_from_slice(bytes);
            self
        }
        fn str(&mut self, text: &str) -> &mut Self {
            self.out.push(b'X');
            self.out.extend((text.len() as u32).to_le_bytes());
            self.op(text.as_bytes())
        }
        fn int(&mut self, value: i64) -> &mut Self {
            self.out.push(b'J');
            self.op(&(value as i32).to_le_bytes())
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        fn int_tuple(&mut self, values: &[i64]) -> &mut Self {
            self.op(b"(");
            for &v in values {
                self.int(v);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
        fn tensor(&mut self, spec: &TensorSpec, legacy: bool) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2");
            self.op(b"((").str("storage");
            self.global("torch", spec.storage_class);
            self.str(spec.key).str("cpu").int(spec.storage_numel);
            if legacy {
                self.op(b"N");
            }
            self.op(b"tQ").int(spec.offset);
            self.int_tuple(spec.size).int_tuple(spec.stride);
            self.op(b"\x89")
                .global("collections", "OrderedDict")
                .op(b")Rt")
                .op(b"R")
        }
        fn state_dict(&mut self, specs: &[TensorSpec], legacy: bool) -> &mut Self {
            self.op(b"\x80\x02")
                .global("collections", "OrderedDict")
                .op(b")Rq\x00(");
            for spec in specs {
                self.str(spec.name).tensor(spec, legacy);
            }
            self.op(b"u.")
        }
    }

    struct TensorSpec {
        name: &'static str,
        storage_class: &'static str,
        key: &'static str,
        storage_numel: i64,
        offset: i64,
        size: &'static [i64],
        stride: &'static [i64],
    }

    /// Storage key, class, raw data.
    type StorageSpec = (&'static str, &'static str, Vec<u8>);

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A small state dict exercising views, shared storages and every conversion.
    fn sample() -> (Vec<TensorSpec>, Vec<StorageSpec>) {
        let specs = vec![
            // A transposed view: w[i][j] = s0[i + 2 j].
            TensorSpec {
                name: "layer.weight",
                storage_class: "FloatStorage",
                key: "s0",
                storage_numel: 6,
                offset: 0,
                size: &[2, 3],
                stride: &[1, 2],
            },
            // Shares s0, from element 4 on.
            TensorSpec {
                name: "layer.bias",
                storage_class: "FloatStorage",
                key: "s0",
                storage_numel: 6,
                offset: 4,
                size: &[2],
                stride: &[1],
            },
            TensorSpec {
                name: "half",
                storage_class: "HalfStorage",
                key: "s1",
                storage_numel: 2,
                offset: 0,
                size: &[2],
                stride: &[1],
            },
            TensorSpec {
                name: "double",
                storage_class: "DoubleStorage",
                key: "s2",
                storage_numel: 1,
                offset: 0,
                size: &[],
                stride: &[],
            },
            TensorSpec {
                name: "bn.num_batches_tracked",
                storage_class: "LongStorage",
                key: "s3",
                storage_numel: 1,
                offset: 0,
                size: &[],
                stride: &[],
            },
        ];
        let storages = vec![
            ("s0", "FloatStorage", f32_bytes(&[0., 1., 2., 3., 4., 5.])),
            // 1.5 and -2.0 as IEEE half floats.
            ("s1", "HalfStorage", vec![0x00, 0x3e, 0x00, 0xc0]),
            ("s2", "DoubleStorage", 0.25f64.to_le_bytes().to_vec()),
            ("s3", "LongStorage", 7i64.to_le_bytes().to_vec()),
        ];
        (specs, storages)
    }

    /// A small legacy-layout checkpoint (for tests elsewhere in the backbone module).
    pub(crate) fn sample_legacy_checkpoint() -> Vec<u8> {
        let (specs, storages) = sample();
        legacy_bytes(&specs, &storages)
    }

    fn legacy_bytes(specs: &[TensorSpec], storages: &[StorageSpec]) -> Vec<u8> {
        let mut w = PickleWriter::default();
        w.op(b"\x80\x02\x8a\x0a")
            .op(&LEGACY_MAGIC.to_le_bytes()[..10])
            .op(b".");
        w.op(b"\x80\x02M\xe9\x03.");
        w.op(b"\x80\x02}(")
            .str("little_endian")
            .op(b"\x88")
            .str("protocol_version")
            .int(1001)
            .op(b"u.");
        w.state_dict(specs, true);
        w.op(b"\x80\x02](");
        for (key, _, _) in storages {
            w.str(key);
        }
        w.op(b"e.");
        for (_, class, data) in storages {
            let element = StorageDtype::from_storage_class(class)
                .unwrap()
                .element_size();
            w.op(&((data.len() / element) as u64).to_le_bytes())
                .op(data);
        }
        w.out
    }

    fn zip_bytes(specs: &[TensorSpec], storages: &[StorageSpec]) -> Vec<u8> {
        let mut pickle = PickleWriter::default();
        pickle.state_dict(specs, false);
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut add = |name: String, data: &[u8]| {
            zip.start_file(name, options).unwrap();
            zip.write_all(data).unwrap();
        };
        add("sample/data.pkl".into(), &pickle.out);
        add("sample/byteorder".into(), b"little");
        for (key, _, data) in storages {
            add(format!("sample/data/{key}"), data);
        }
        add("sample/version".into(), b"3\n");
        zip.finish().unwrap().into_inner()
    }

    fn values(tensor: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(tensor.to_kind(Kind::Float).flatten(0, -1)).unwrap()
    }

    fn assert_sample(tensors: &NamedTensors, with_counter: bool) {
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec!["layer.weight", "layer.bias", "half", "double"];
        if with_counter {
            expected.push("bn.num_batches_tracked");
        }
        assert_eq!(names, expected);
        let get = |name: &str| &tensors.iter().find(|(n, _)| n == name).unwrap().1;
        let weight = get("layer.weight");
        assert_eq!(weight.size(), [2, 3]);
        assert_eq!(weight.kind(), Kind::Float);
        assert!(weight.is_contiguous());
        assert_eq!(values(weight), [0., 2., 4., 1., 3., 5.]);
        assert_eq!(values(get("layer.bias")), [4., 5.]);
        assert_eq!(get("half").kind(), Kind::Float);
        assert_eq!(values(get("half")), [1.5, -2.0]);
        assert_eq!(get("double").size(), Vec::<i64>::new());
        assert_eq!(values(get("double")), [0.25]);
        if with_counter {
            let counter = get("bn.num_batches_tracked");
            assert_eq!(counter.kind(), Kind::Int64);
            assert_eq!(counter.int64_value(&[]), 7);
        }
    }

    #[test]
    fn reads_legacy_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legacy.pth");
        let (specs, storages) = sample();
        std::fs::write(&path, legacy_bytes(&specs, &storages)).unwrap();
        assert_sample(&read_pth(&path).unwrap(), true);
    }

    #[test]
    fn reads_zip_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zipped.pth");
        let (specs, storages) = sample();
        std::fs::write(&path, zip_bytes(&specs, &storages)).unwrap();
        assert_sample(&read_pth(&path).unwrap(), true);
    }

    #[test]
    fn converts_to_safetensors_without_counters() {
        let dir = tempfile::tempdir().unwrap();
        let pth = dir.path().join("legacy.pth");
        let (specs, storages) = sample();
        std::fs::write(&pth, legacy_bytes(&specs, &storages)).unwrap();
        let out = dir.path().join("converted.safetensors");
        convert_to_safetensors(&pth, &out).unwrap();
        let tensors = read_weights(&out).unwrap();
        assert!(tensors.iter().all(|(_, t)| t.kind() == Kind::Float));
        // safetensors stores names sorted; compare as a set via assert_sample's lookups.
        let mut ordered: NamedTensors = Vec::new();
        for name in ["layer.weight", "layer.bias", "half", "double"] {
            let (n, t) = tensors.iter().find(|(n, _)| n == name).unwrap();
            ordered.push((n.clone(), t.shallow_clone()));
        }
        assert_eq!(tensors.len(), 4);
        assert_sample(&ordered, false);
    }

    #[test]
    fn truncated_legacy_file_names_the_storage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pth");
        let (specs, storages) = sample();
        let bytes = legacy_bytes(&specs, &storages);
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = read_pth(&path).unwrap_err().to_string();
        assert!(
            err.contains("cut.pth") && err.contains("truncated"),
            "{err}"
        );
        assert!(err.contains("`s3`"), "{err}");
    }

    #[test]
    fn views_past_the_storage_end_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad_view.pth");
        let (mut specs, storages) = sample();
        specs[1].offset = 5;
        std::fs::write(&path, zip_bytes(&specs, &storages)).unwrap();
        let err = read_pth(&path).unwrap_err().to_string();
        assert!(
            err.contains("`layer.bias`") && err.contains("reach past"),
            "{err}"
        );
    }

    #[test]
    fn unknown_storage_types_and_foreign_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (mut specs, storages) = sample();
        specs[2].storage_class = "ComplexFloatStorage";
        let path = dir.path().join("complex.pth");
        std::fs::write(&path, zip_bytes(&specs, &storages)).unwrap();
        let err = read_pth(&path).unwrap_err().to_string();
        assert!(err.contains("torch.ComplexFloatStorage"), "{err}");

        let text = dir.path().join("notes.pth");
        std::fs::write(&text, "hello").unwrap();
        let err = read_pth(&text).unwrap_err().to_string();
        assert!(err.contains("not a PyTorch checkpoint"), "{err}");

        let missing = dir.path().join("missing.pth");
        assert!(matches!(read_pth(&missing), Err(BackboneError::Io { .. })));
    }

    #[test]
    fn bad_opcodes_report_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.pth");
        let (specs, storages) = sample();
        let mut bytes = legacy_bytes(&specs, &storages);
        // Replace the state dict's first opcode after PROTO (the OrderedDict GLOBAL) with an
        // opcode the reader does not know.
        let state_start = bytes
            .windows(2)
            .enumerate()
            .filter(|(_, w)| *w == b"\x80\x02")
            .nth(3)
            .unwrap()
            .0;
        bytes[state_start + 2] = b'I';
        std::fs::write(&path, bytes).unwrap();
        let err = read_pth(&path).unwrap_err().to_string();
        assert!(err.contains("odd.pth"), "{err}");
        assert!(
            err.contains(&format!("byte offset {}", state_start + 2)),
            "{err}"
        );
    }
}
