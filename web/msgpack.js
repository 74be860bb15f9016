// A small msgpack codec: the subset the gateway protocol uses (no ext types), nothing more.
//
// encode: null/undefined -> nil, boolean, integer Number / BigInt -> the smallest int format,
// other Numbers -> float64, string -> str (UTF-8), Uint8Array / ArrayBuffer -> bin, Array -> array,
// Map / plain object -> map (object fields that are undefined are left out, so optional frame fields
// can simply be omitted).
// decode: the reverse; 64-bit ints outside Number's safe range come back as BigInt, bin as Uint8Array,
// maps as plain objects.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

const UINT64_MAX = 2n ** 64n - 1n;
const INT64_MIN = -(2n ** 63n);

export class MsgpackError extends Error {}

// ---- encode -------------------------------------------------------------------------------------

class Writer {
  constructor() {
    this.bytes = new Uint8Array(256);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(n) {
    if (this.length + n <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  // Writes a type byte followed by a big-endian number through one DataView setter.
  put(typeByte, setter, value, size) {
    this.reserve(1 + size);
    this.bytes[this.length++] = typeByte;
    if (size) this.view[setter](this.length, value);
    this.length += size;
  }

  raw(data) {
    this.reserve(data.length);
    this.bytes.set(data, this.length);
    this.length += data.length;
  }
}

export function encode(value) {
  const writer = new Writer();
  writeValue(writer, value, 0);
  return writer.bytes.slice(0, writer.length);
}

function writeValue(w, value, depth) {
  if (depth > 64) throw new MsgpackError("nesting too deep to encode");
  if (value === null || value === undefined) w.put(0xc0, null, 0, 0);
  else if (value === true) w.put(0xc3, null, 0, 0);
  else if (value === false) w.put(0xc2, null, 0, 0);
  else if (typeof value === "number") writeNumber(w, value);
  else if (typeof value === "bigint") writeBigInt(w, value);
  else if (typeof value === "string") writeString(w, value);
  else if (value instanceof Uint8Array) writeBin(w, value);
  else if (value instanceof ArrayBuffer) writeBin(w, new Uint8Array(value));
  else if (Array.isArray(value)) writeArray(w, value, depth);
  else if (value instanceof Map) writeMap(w, [...value.entries()], depth);
  else if (typeof value === "object") writeMap(w, Object.entries(value).filter(([, v]) => v !== undefined), depth);
  else throw new MsgpackError(`cannot encode a ${typeof value}`);
}

function writeNumber(w, n) {
  // -0 stays a float so it survives the round trip; integers beyond 2^53 are not exact as Numbers.
  if (Number.isSafeInteger(n) && !Object.is(n, -0)) writeInt(w, n);
  else w.put(0xcb, "setFloat64", n, 8);
}

function writeInt(w, n) {
  if (n >= 0) {
    if (n < 0x80) w.put(n, null, 0, 0);
    else if (n <= 0xff) w.put(0xcc, "setUint8", n, 1);
    else if (n <= 0xffff) w.put(0xcd, "setUint16", n, 2);
    else if (n <= 0xffffffff) w.put(0xce, "setUint32", n, 4);
    else w.put(0xcf, "setBigUint64", BigInt(n), 8);
  } else {
    if (n >= -32) w.put(n & 0xff, null, 0, 0);
    else if (n >= -0x80) w.put(0xd0, "setInt8", n, 1);
    else if (n >= -0x8000) w.put(0xd1, "setInt16", n, 2);
    else if (n >= -0x80000000) w.put(0xd2, "setInt32", n, 4);
    else w.put(0xd3, "setBigInt64", BigInt(n), 8);
  }
}

function writeBigInt(w, n) {
  if (n > UINT64_MAX || n < INT64_MIN) throw new MsgpackError(`integer ${n} does not fit in 64 bits`);
  if (n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)) writeInt(w, Number(n));
  else if (n > 0n) w.put(0xcf, "setBigUint64", n, 8);
  else w.put(0xd3, "setBigInt64", n, 8);
}

function writeHeader(w, length, fix, fixMax, codes) {
  // codes: the 8-, 16- and 32-bit length variants (null where the family has no 8-bit form).
  if (length <= fixMax) w.put(fix | length, null, 0, 0);
  else if (codes[0] !== null && length <= 0xff) w.put(codes[0], "setUint8", length, 1);
  else if (length <= 0xffff) w.put(codes[1], "setUint16", length, 2);
  else if (length <= 0xffffffff) w.put(codes[2], "setUint32", length, 4);
  else throw new MsgpackError("value too long to encode");
}

function writeString(w, s) {
  const data = textEncoder.encode(s);
  writeHeader(w, data.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
  w.raw(data);
}

function writeBin(w, data) {
  writeHeader(w, data.length, 0xc4, -1, [0xc4, 0xc5, 0xc6]);
  w.raw(data);
}

function writeArray(w, items, depth) {
  writeHeader(w, items.length, 0x90, 15, [null, 0xdc, 0xdd]);
  for (const item of items) writeValue(w, item, depth + 1);
}

function writeMap(w, entries, depth) {
  writeHeader(w, entries.length, 0x80, 15, [null, 0xde, 0xdf]);
  for (const [key, item] of entries) {
    writeValue(w, key, depth + 1);
    writeValue(w, item, depth + 1);
  }
}

// ---- decode -------------------------------------------------------------------------------------

class Reader {
  constructor(data) {
    this.bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    this.offset = 0;
  }

  take(n) {
    if (this.offset + n > this.bytes.length) throw new MsgpackError("truncated msgpack data");
    const start = this.offset;
    this.offset += n;
    return start;
  }

  // Reads a big-endian number of `size` bytes through one DataView getter.
  get(getter, size) {
    return this.view[getter](this.take(size));
  }

  slice(n) {
    const start = this.take(n);
    return this.bytes.slice(start, start + n); // a copy, so the frame's buffer can be freed
  }
}

export function decode(data) {
  const reader = new Reader(data);
  const value = readValue(reader, 0);
  if (reader.offset !== reader.bytes.length) throw new MsgpackError("extra bytes after msgpack value");
  return value;
}

// Fixed-size formats by type byte: [DataView getter, size].
const NUMBERS = {
  0xca: ["getFloat32", 4], 0xcb: ["getFloat64", 8],
  0xcc: ["getUint8", 1], 0xcd: ["getUint16", 2], 0xce: ["getUint32", 4], 0xcf: ["getBigUint64", 8],
  0xd0: ["getInt8", 1], 0xd1: ["getInt16", 2], 0xd2: ["getInt32", 4], 0xd3: ["getBigInt64", 8],
};
// Length-prefixed formats by type byte: [kind, length getter, length size].
const SIZED = {
  0xc4: ["bin", "getUint8", 1], 0xc5: ["bin", "getUint16", 2], 0xc6: ["bin", "getUint32", 4],
  0xd9: ["str", "getUint8", 1], 0xda: ["str", "getUint16", 2], 0xdb: ["str", "getUint32", 4],
  0xdc: ["array", "getUint16", 2], 0xdd: ["array", "getUint32", 4],
  0xde: ["map", "getUint16", 2], 0xdf: ["map", "getUint32", 4],
};

function readValue(r, depth) {
  if (depth > 64) throw new MsgpackError("msgpack nesting too deep");
  const type = r.bytes[r.take(1)];
  if (type < 0x80) return type;
  if (type >= 0xe0) return type - 0x100;
  if (type < 0x90) return readMap(r, type & 0x0f, depth);
  if (type < 0xa0) return readArray(r, type & 0x0f, depth);
  if (type < 0xc0) return readString(r, type & 0x1f);
  if (type === 0xc0) return null;
  if (type === 0xc2) return false;
  if (type === 0xc3) return true;
  if (type in NUMBERS) {
    const value = r.get(...NUMBERS[type]);
    return typeof value === "bigint" ? fromBigInt(value) : value;
  }
  if (type in SIZED) {
    const [kind, getter, size] = SIZED[type];
    const length = r.get(getter, size);
    if (kind === "bin") return r.slice(length);
    if (kind === "str") return readString(r, length);
    return kind === "array" ? readArray(r, length, depth) : readMap(r, length, depth);
  }
  throw new MsgpackError(`unsupported msgpack type 0x${type.toString(16)}`); // ext types, 0xc1
}

function fromBigInt(n) {
  const safe = n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER);
  return safe ? Number(n) : n;
}

function readString(r, length) {
  const start = r.take(length);
  try {
    return textDecoder.decode(r.bytes.subarray(start, start + length));
  } catch {
    throw new MsgpackError("invalid UTF-8 in a msgpack string");
  }
}

function readArray(r, length, depth) {
  const items = [];
  for (let i = 0; i < length; i++) items.push(readValue(r, depth + 1));
  return items;
}

function readMap(r, length, depth) {
  const map = {};
  for (let i = 0; i < length; i++) {
    const key = readValue(r, depth + 1);
    if (typeof key !== "string") throw new MsgpackError("map keys must be strings");
    // defineProperty, so a "__proto__" key is stored as data instead of replacing the prototype.
    Object.defineProperty(map, key, { value: readValue(r, depth + 1), enumerable: true, writable: true, configurable: true });
  }
  return map;
}
