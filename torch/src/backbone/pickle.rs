//! A minimal pickle virtual machine: just enough of Python's pickle protocols 2 to 5 to read the
//! object graph of a PyTorch checkpoint (dicts, tuples, lists, numbers, strings and calls of
//! globals) without Python.
//!
//! The machine evaluates nothing: a call (`REDUCE`, `NEWOBJ`) becomes a [`Value::Call`] holding
//! the callable and its arguments, and a persistent id (`BINPERSID`, how torch refers to tensor
//! storages kept outside the pickle) becomes a [`Value::Persistent`]. The checkpoint reader then
//! interprets the handful of torch calls it knows. The one exception is `collections.OrderedDict`,
//! which becomes a plain [`Value::Dict`] because state dicts are ordered dicts and `SETITEMS`
//! must be able to fill them.

use std::collections::HashMap;

/// A Python object as the pickle describes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Python ints are unbounded; 128 bits cover every integer torch writes (the largest is the
    /// 80-bit magic number of the legacy format).
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Key/value pairs in insertion order (Python dicts keep it, and state dicts rely on it).
    Dict(Vec<(Value, Value)>),
    /// A reference to `module.name` (a class or function).
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)`, left unevaluated, with the state a later `BUILD` gave it.
    Call {
        callable: Box<Value>,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    /// An object the pickle refers to by id instead of containing it.
    Persistent(Box<Value>),
}

impl Value {
    /// Whether this is the global `module.name`.
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global { module: m, name: n } if m == module && n == name)
    }

    /// A short description for error messages (the Python type, not the whole value).
    pub fn kind_name(&self) -> String {
        match self {
            Value::None => "None".to_string(),
            Value::Bool(_) => "bool".to_string(),
            Value::Int(_) => "int".to_string(),
            Value::Float(_) => "float".to_string(),
            Value::Str(_) => "str".to_string(),
            Value::Bytes(_) => "bytes".to_string(),
            Value::Tuple(_) => "tuple".to_string(),
            Value::List(_) => "list".to_string(),
            Value::Dict(_) => "dict".to_string(),
            Value::Global { module, name } => format!("global {module}.{name}"),
            Value::Call { callable, .. } => format!("call of {}", callable.kind_name()),
            Value::Persistent(_) => "persistent id".to_string(),
        }
    }
}

/// A pickle that could not be read: where and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    /// Byte offset of the offending opcode, counted from the start of the buffer given to
    /// [`load`] (so for a pickle embedded in a larger file it is the file offset).
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pickle byte offset {}: {}", self.offset, self.message)
    }
}

/// Reads one pickle from `data` starting at `start`; returns the unpickled value and the offset
/// just after its `STOP` opcode (where a following pickle or raw data begins).
pub fn load(data: &[u8], start: usize) -> Result<(Value, usize), PickleError> {
    let mut machine = Machine {
        data,
        pos: start,
        op_start: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let value = machine.run()?;
    Ok((value, machine.pos))
}

/// The state of one unpickling run.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    /// Stack lengths at each `MARK`, innermost last.
    marks: Vec<usize>,
    /// Values saved by `*PUT`/`MEMOIZE`. Python's memo shares objects; copies are enough here
    /// because torch never mutates a memoised container after referring back to it.
    memo: HashMap<u32, Value>,
}

// Opcodes, named as in CPython's `pickle.py`.
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

impl<'a> Machine<'a> {
    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_start = self.pos;
            let op = self.read_u8()?;
            match op {
                PROTO => {
                    let protocol = self.read_u8()?;
                    if protocol > 5 {
                        return Err(self.error(format!("unsupported pickle protocol {protocol}")));
                    }
                }
                // Frames only help a streaming reader prefetch; the whole buffer is here.
                FRAME => {
                    self.take(8)?;
                }
                STOP => return self.pop(),
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    self.pop()?;
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }

                NONE => self.stack.push(Value::None),
                NEWTRUE => self.stack.push(Value::Bool(true)),
                NEWFALSE => self.stack.push(Value::Bool(false)),
                BININT => {
                    let bytes = self.take(4)?;
                    let value = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    self.stack.push(Value::Int(value.into()));
                }
                BININT1 => {
                    let value = self.read_u8()?;
                    self.stack.push(Value::Int(value.into()));
                }
                BININT2 => {
                    let bytes = self.take(2)?;
                    let value = u16::from_le_bytes([bytes[0], bytes[1]]);
                    self.stack.push(Value::Int(value.into()));
                }
                LONG1 => {
                    let len = usize::from(self.read_u8()?);
                    let value = self.read_long(len)?;
                    self.stack.push(Value::Int(value));
                }
                LONG4 => {
                    let len = self.read_len(4)?;
                    let value = self.read_long(len)?;
                    self.stack.push(Value::Int(value));
                }
                BINFLOAT => {
                    // The one big-endian number in the format.
                    let bytes = self.take(8)?;
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(bytes);
                    self.stack.push(Value::Float(f64::from_be_bytes(raw)));
                }

                BINUNICODE => {
                    let len = self.read_len(4)?;
                    let text = self.read_str(len)?;
                    self.stack.push(Value::Str(text));
                }
                SHORT_BINUNICODE => {
                    let len = usize::from(self.read_u8()?);
                    let text = self.read_str(len)?;
                    self.stack.push(Value::Str(text));
                }
                BINUNICODE8 => {
                    let len = self.read_len(8)?;
                    let text = self.read_str(len)?;
                    self.stack.push(Value::Str(text));
                }
                // Python 2 byte strings: torch's storage keys and names are ASCII, so they are
                // read as text like Python 3 does with `encoding="latin1"` or "ascii".
                BINSTRING => {
                    let len = self.read_len(4)?;
                    let bytes = self.take(len)?;
                    self.stack
                        .push(Value::Str(bytes.iter().map(|&b| char::from(b)).collect()));
                }
                SHORT_BINSTRING => {
                    let len = usize::from(self.read_u8()?);
                    let bytes = self.take(len)?;
                    self.stack
                        .push(Value::Str(bytes.iter().map(|&b| char::from(b)).collect()));
                }
                BINBYTES => {
                    let len = self.read_len(4)?;
                    let bytes = self.take(len)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                SHORT_BINBYTES => {
                    let len = usize::from(self.read_u8()?);
                    let bytes = self.take(len)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                BINBYTES8 => {
                    let len = self.read_len(8)?;
                    let bytes = self.take(len)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }

                EMPTY_TUPLE => self.stack.push(Value::Tuple(Vec::new())),
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let count = usize::from(op - TUPLE1 + 1);
                    if self.stack.len() < count {
                        return Err(self.error("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - count);
                    self.stack.push(Value::Tuple(items));
                }
                EMPTY_LIST => self.stack.push(Value::List(Vec::new())),
                LIST => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                APPEND => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                // Sets only occur in unusual checkpoints; a list keeps their items readable.
                EMPTY_SET => self.stack.push(Value::List(Vec::new())),
                ADDITEMS => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                FROZENSET => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                EMPTY_DICT => self.stack.push(Value::Dict(Vec::new())),
                DICT => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.stack.push(Value::Dict(pairs));
                }
                SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![(key, value)])?;
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }

                GLOBAL => {
                    let module = self.read_line()?;
                    let name = self.read_line()?;
                    self.stack.push(Value::Global { module, name });
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.stack.push(Value::Global { module, name })
                        }
                        (module, name) => {
                            return Err(self.error(format!(
                                "STACK_GLOBAL needs two strings, found {} and {}",
                                module.kind_name(),
                                name.kind_name()
                            )))
                        }
                    }
                }
                REDUCE | NEWOBJ => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = match args {
                        Value::Tuple(args) => args,
                        other => {
                            return Err(self.error(format!(
                                "call arguments must be a tuple, found {}",
                                other.kind_name()
                            )))
                        }
                    };
                    let value =
                        if callable.is_global("collections", "OrderedDict") && args.is_empty() {
                            Value::Dict(Vec::new())
                        } else {
                            Value::Call {
                                callable: Box::new(callable),
                                args,
                                state: None,
                            }
                        };
                    self.stack.push(value);
                }
                BUILD => {
                    let state = self.pop()?;
                    match self.top_mut()? {
                        Value::Call { state: slot, .. } => *slot = Some(Box::new(state)),
                        // An OrderedDict's state is its attributes (torch puts the module
                        // `_metadata` there), which a reader of tensors does not need.
                        Value::Dict(_) => {}
                        other => {
                            let kind = other.kind_name();
                            return Err(self.error(format!("BUILD on a {kind}")));
                        }
                    }
                }
                BINPERSID => {
                    let id = self.pop()?;
                    self.stack.push(Value::Persistent(Box::new(id)));
                }

                BINPUT => {
                    let index = u32::from(self.read_u8()?);
                    self.put(index)?;
                }
                LONG_BINPUT => {
                    let index = self.read_u32()?;
                    self.put(index)?;
                }
                MEMOIZE => {
                    let index =
                        u32::try_from(self.memo.len()).map_err(|_| self.error("memo too large"))?;
                    self.put(index)?;
                }
                BINGET => {
                    let index = u32::from(self.read_u8()?);
                    self.get(index)?;
                }
                LONG_BINGET => {
                    let index = self.read_u32()?;
                    self.get(index)?;
                }

                other => {
                    let shown = if other.is_ascii_graphic() {
                        format!("0x{other:02x} ('{}')", char::from(other))
                    } else {
                        format!("0x{other:02x}")
                    };
                    return Err(self.error(format!("unsupported pickle opcode {shown}")));
                }
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_start,
            message: message.into(),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| self.error("truncated pickle"))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn read_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn read_u32(&mut self) -> Result<u32, PickleError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A little-endian length field of `width` bytes (4 or 8).
    fn read_len(&mut self, width: usize) -> Result<usize, PickleError> {
        let bytes = self.take(width)?;
        let mut raw = [0u8; 8];
        raw[..width].copy_from_slice(bytes);
        usize::try_from(u64::from_le_bytes(raw)).map_err(|_| self.error("length too large"))
    }

    /// A little-endian two's-complement integer of `len` bytes (`LONG1`/`LONG4`).
    fn read_long(&mut self, len: usize) -> Result<i128, PickleError> {
        if len > 16 {
            return Err(self.error(format!("integer of {len} bytes is too large")));
        }
        let bytes = self.take(len)?;
        let Some(&last) = bytes.last() else {
            return Ok(0);
        };
        // Sign-extend from the most significant byte given.
        let fill = if last & 0x80 != 0 { 0xff } else { 0 };
        let mut raw = [fill; 16];
        raw[..len].copy_from_slice(bytes);
        Ok(i128::from_le_bytes(raw))
    }

    fn read_str(&mut self, len: usize) -> Result<String, PickleError> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("string is not valid UTF-8"))
    }

    /// A newline-terminated ASCII line (the arguments of `GLOBAL`).
    fn read_line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("unterminated line"))?;
        let line = self.read_str(len)?;
        self.pos += 1;
        Ok(line)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        // A value below the innermost mark belongs to an outer frame.
        if self
            .marks
            .last()
            .is_some_and(|&mark| mark >= self.stack.len())
        {
            return Err(self.error("stack underflow (popping past a MARK)"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.error("stack underflow"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        self.stack.last().ok_or_else(|| self.error("empty stack"))
    }

    fn top_mut(&mut self) -> Result<&mut Value, PickleError> {
        let error = self.error("empty stack");
        self.stack.last_mut().ok_or(error)
    }

    /// Pops everything pushed since the innermost `MARK`, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.error("no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.error("MARK above the stack top"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.error("odd number of items for a dict"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<(), PickleError> {
        match self.top_mut()? {
            Value::Dict(entries) => {
                for (key, value) in pairs {
                    // Python semantics: a repeated key replaces the value in place.
                    match entries.iter_mut().find(|(existing, _)| *existing == key) {
                        Some(entry) => entry.1 = value,
                        None => entries.push((key, value)),
                    }
                }
                Ok(())
            }
            other => {
                let kind = other.kind_name();
                Err(self.error(format!("SETITEM on a {kind}")))
            }
        }
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top_mut()? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => {
                let kind = other.kind_name();
                Err(self.error(format!("APPEND on a {kind}")))
            }
        }
    }

    fn put(&mut self, index: u32) -> Result<(), PickleError> {
        let top = self.top()?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<(), PickleError> {
        let value = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.error(format!("memo entry {index} was never stored")))?;
        self.stack.push(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protocol_2_dict_with_memo_and_marks() {
        // {'a': (1, -2, 300), 'b': [None, True, 1.5], 'a2': <memo of the tuple>}
        let mut data = vec![PROTO, 2, EMPTY_DICT, BINPUT, 0, MARK];
        data.extend([BINUNICODE, 1, 0, 0, 0, b'a']);
        data.extend([
            BININT1, 1, BININT, 0xfe, 0xff, 0xff, 0xff, BININT2, 0x2c, 0x01,
        ]);
        data.extend([TUPLE3, BINPUT, 1]);
        data.extend([
            SHORT_BINSTRING,
            1,
            b'b',
            EMPTY_LIST,
            MARK,
            NONE,
            NEWTRUE,
            BINFLOAT,
        ]);
        data.extend(1.5f64.to_be_bytes());
        data.extend([APPENDS]);
        data.extend([SHORT_BINUNICODE, 2, b'a', b'2', BINGET, 1]);
        data.extend([SETITEMS, STOP, 0xde, 0xad]);
        let (value, end) = load(&data, 0).unwrap();
        assert_eq!(end, data.len() - 2, "stops right after STOP");
        let tuple = Value::Tuple(vec![Value::Int(1), Value::Int(-2), Value::Int(300)]);
        assert_eq!(
            value,
            Value::Dict(vec![
                (Value::Str("a".into()), tuple.clone()),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::None, Value::Bool(true), Value::Float(1.5)])
                ),
                (Value::Str("a2".into()), tuple),
            ])
        );
    }

    #[test]
    fn reads_protocol_4_globals_calls_and_persistent_ids() {
        let mut data = vec![PROTO, 4, FRAME, 0, 0, 0, 0, 0, 0, 0, 0];
        data.extend([SHORT_BINUNICODE, 11]);
        data.extend(b"collections");
        data.extend([MEMOIZE, SHORT_BINUNICODE, 11]);
        data.extend(b"OrderedDict");
        data.extend([MEMOIZE, STACK_GLOBAL, MEMOIZE, EMPTY_TUPLE, REDUCE, MEMOIZE]);
        data.extend([SHORT_BINUNICODE, 1, b'k', GLOBAL]);
        data.extend(b"torch\nFloatStorage\n");
        data.extend([SHORT_BINUNICODE, 1, b'0', TUPLE2, BINPERSID]);
        data.extend([
            BINGET,
            2,
            EMPTY_TUPLE,
            REDUCE,
            MARK,
            DICT,
            POP,
            TUPLE2,
            SETITEM,
        ]);
        data.extend([
            LONG1, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ]);
        data.extend([POP, EMPTY_DICT, BUILD, STOP]);
        let (value, _) = load(&data, 0).unwrap();
        let Value::Dict(entries) = value else {
            panic!("expected a dict, got {value:?}")
        };
        assert_eq!(entries.len(), 1);
        let Value::Tuple(items) = &entries[0].1 else {
            panic!("expected a tuple")
        };
        assert_eq!(
            items[0],
            Value::Persistent(Box::new(Value::Tuple(vec![
                Value::Global {
                    module: "torch".into(),
                    name: "FloatStorage".into()
                },
                Value::Str("0".into()),
            ])))
        );
        assert_eq!(
            items[1],
            Value::Dict(Vec::new()),
            "memoised OrderedDict global"
        );
    }

    #[test]
    fn long_integers_are_sign_extended() {
        let data = [PROTO, 2, LONG1, 2, 0x00, 0xff, STOP];
        assert_eq!(load(&data, 0).unwrap().0, Value::Int(-256));
        let magic = [
            PROTO, 2, LONG1, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, STOP,
        ];
        assert_eq!(
            load(&magic, 0).unwrap().0,
            Value::Int(0x1950a86a20f9469cfc6c)
        );
    }

    #[test]
    fn unknown_opcode_reports_its_offset() {
        let data = [PROTO, 2, NONE, b'I', b'1', b'\n', STOP];
        let err = load(&data, 0).unwrap_err();
        assert_eq!(err.offset, 3);
        assert!(err.message.contains("0x49"), "{err}");
        // Offsets count from the start of the buffer, not of the pickle.
        let mut shifted = vec![0u8; 5];
        shifted.extend(data);
        assert_eq!(load(&shifted, 5).unwrap_err().offset, 8);
    }

    #[test]
    fn truncated_and_unbalanced_pickles_are_errors() {
        assert!(load(&[PROTO, 2, BINUNICODE, 9, 0, 0, 0, b'a'], 0).is_err());
        assert!(load(&[PROTO, 2, TUPLE, STOP], 0).is_err());
        assert!(load(&[PROTO, 2, MARK, SETITEM, STOP], 0).is_err());
        assert!(load(&[PROTO, 2, BINGET, 3, STOP], 0).is_err());
    }
}
