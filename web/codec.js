// Frames as msgpack, with @msgpack/msgpack: web/vendor/msgpack.min.js is its browser build, a classic
// script (loaded by index.html before any module) that defines globalThis.MessagePack.

const { encode: pack, decode: unpack } = globalThis.MessagePack;

// Fields left `undefined` are left out of the frame, so optional fields need no special casing.
export function encode(frame) {
  return pack(frame, { ignoreUndefined: true });
}

// Binary fields arrive as Uint8Array; a malformed message throws.
export function decode(bytes) {
  return unpack(bytes);
}
