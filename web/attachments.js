// Images waiting to be sent. Each file is checked here, by name, against the server's limits and
// decoded once, so that a file the browser cannot read never becomes a broken thumbnail.

const TYPES = new Set(["image/png", "image/jpeg", "image/webp", "image/gif"]);

// An attachment {name, data: Uint8Array, url, width, height}, or an Error whose message names the file.
export async function readImage(file, limits) {
  if (!TYPES.has(file.type)) throw new Error(`${file.name} is not a PNG, JPEG, WebP or GIF image.`);
  if (file.size > (limits.max_image_bytes ?? Infinity)) {
    throw new Error(`${file.name} is ${formatBytes(file.size)}; the server accepts at most ${formatBytes(limits.max_image_bytes)}.`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`${file.name} could not be read as an image; it may be damaged.`);
  }
  const { width, height } = bitmap;
  bitmap.close();
  if (width * height > (limits.max_image_pixels ?? Infinity)) {
    throw new Error(`${file.name} is ${width}×${height} pixels; the server accepts at most ${limits.max_image_pixels.toLocaleString()} pixels.`);
  }
  const data = new Uint8Array(await file.arrayBuffer()); // sent as msgpack bin, never base64
  return { name: file.name, data, url: URL.createObjectURL(file), width, height };
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

// The server names attachments by position ("image 0 is truncated"); say which file instead.
export function nameImages(message, attachments) {
  return message.replace(/\bimage (\d+)\b/g, (whole, index) => {
    const attachment = attachments[Number(index)];
    return attachment ? `"${attachment.name}"` : whole;
  });
}
