// The megafs download page (docs/format.md §5b): fetch a share's manifest and blocks
// with plain GETs from the page's own origin, verify and decrypt them with WebCrypto,
// and offer the bytes for saving only once every block has been verified.
// Built into megafs/web/megafs.html by web/build.mjs, with fzstd (global `fzstd`).
"use strict";

(function () {
  // Bytes held in memory at most (a file, a .zip); larger files stream to disk. Only a
  // script run before this one can lower it (the tests, through the DevTools protocol).
  var BLOB_LIMIT = Math.min(512 * 1024 * 1024, window.megafsBlobLimit || Infinity);
  var PARALLEL = 4;
  var KIND_BLOCK = 1, KIND_SHARE = 6;
  var MIN_BS = 64 << 10, MAX_BS = 64 << 20, MAX_SIZE = Math.pow(2, 44);
  // Version 3 block entries (megafs/store/manifest.py): offsets in the object holding
  // the envelope, the envelope's length from the smallest envelope to a full block's.
  var MAX_OFFSET = Math.pow(2, 40), MIN_ENVELOPE = 75, ENVELOPE_SLACK = 1.13;
  // Neighbouring envelopes of one pack are read with one Range GET of at most this
  // many bytes, skipping at most COALESCE_GAP bytes between two of them.
  var COALESCE_MAX = 4 << 20, COALESCE_GAP = 64 << 10;
  var enc = new TextEncoder();
  var subtle = window.crypto && window.crypto.subtle;

  function $(id) { return document.getElementById(id); }

  // -- errors shown to the user ------------------------------------------------------
  function Fail(text) { this.text = text; }
  function fail(text) { return new Fail(text); }
  var TAMPERED = "tampered: ";

  function setStatus(text, isError) {
    var el = $("status");
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  function showError(e) {
    var text = e instanceof Fail ? e.text
      : "unexpected error: " + (e && e.message ? e.message : String(e));
    setStatus(text, true);
    setBusy(false);
  }

  // -- bytes -------------------------------------------------------------------------
  function concat(parts) {
    var n = 0, i, out, off = 0;
    for (i = 0; i < parts.length; i++) n += parts[i].length;
    out = new Uint8Array(n);
    for (i = 0; i < parts.length; i++) { out.set(parts[i], off); off += parts[i].length; }
    return out;
  }

  function hex(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return s;
  }

  function fromHex(text) {
    var out = new Uint8Array(text.length / 2);
    for (var i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
    return out;
  }

  function fromB64url(text) {
    if (!/^[A-Za-z0-9_-]*$/.test(text)) return null;
    var b;
    try { b = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "==".slice(0, (4 - text.length % 4) % 4)); } catch (e) { return null; }
    var out = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
    return out;
  }

  function equal(a, b) { // constant time for equal lengths
    if (a.length !== b.length) return false;
    var d = 0;
    for (var i = 0; i < a.length; i++) d |= a[i] ^ b[i];
    return d === 0;
  }

  function size(n) {
    var units = ["bytes", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  // -- the link ----------------------------------------------------------------------
  function parseLink() {
    var params = new URLSearchParams(location.hash.slice(1));
    var id = params.get("s") || "", k = params.get("k") || "";
    if (!/^[0-9a-f]{32}$/.test(id)) throw fail("this link is incomplete: the share id after #s= is missing or damaged");
    var raw = fromB64url(k);
    if (!raw || raw.length !== 64) throw fail("this link is incomplete: its key after &k= is missing or damaged (copy the whole link)");
    return { id: id, key: raw.subarray(0, 32), publicKey: raw.subarray(32) };
  }

  // -- fetching (same origin, no credentials) ----------------------------------------
  async function fetchBytes(objectKey, range) {
    var headers = {};
    if (range) headers.Range = "bytes=" + range[0] + "-" + (range[0] + range[1] - 1);
    var response;
    try {
      response = await fetch(new URL(objectKey, location.href).href,
                             { cache: "no-store", credentials: "omit", headers: headers, redirect: "error" });
    } catch (e) {
      throw fail("unreachable: the store cannot be reached (" + (e.message || "network error") + "); try again later");
    }
    if (response.status === 200 || response.status === 206) {
      var data = new Uint8Array(await response.arrayBuffer());
      if (range && response.status === 200) data = data.subarray(range[0], range[0] + range[1]);
      return data;
    }
    return response.status;
  }

  // -- the envelope (docs/format.md §2) ---------------------------------------------
  async function openEnvelope(key, kind, objectKey, blob, what) {
    if (blob.length < 50 + 9 + 16 || blob[0] !== 0x4d || blob[1] !== 0x47 || blob[2] !== 0x46 || blob[3] !== 0x53)
      throw fail(TAMPERED + what + " is damaged (not a megafs object)");
    if (blob[4] !== 1 && blob[4] !== 2) throw fail(what + " has format version " + blob[4] + ", which this page does not read");
    if (blob[5] !== kind) throw fail(TAMPERED + what + " failed authentication (wrong object kind)");
    var nonce = blob.slice(6, 18);
    var macKey = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    var commit = new Uint8Array(await subtle.sign("HMAC", macKey, concat([enc.encode("megafs commit v1"), nonce])));
    if (!equal(commit, blob.subarray(18, 50))) return null; // not this key
    var aesKey = await subtle.importKey("raw", key, { name: "AES-GCM" }, false, ["decrypt"]);
    var inner;
    try {
      inner = new Uint8Array(await subtle.decrypt(
        { name: "AES-GCM", iv: nonce, additionalData: concat([blob.subarray(0, 6), enc.encode(objectKey)]), tagLength: 128 },
        aesKey, blob.subarray(50)));
    } catch (e) {
      throw fail(TAMPERED + what + " failed authentication (tampered or damaged)");
    }
    var flags = inner[0];
    var length = Number(new DataView(inner.buffer, inner.byteOffset + 1, 8).getBigUint64(0, true));
    if ((flags & ~1) || length > inner.length - 9) throw fail(TAMPERED + what + " is malformed");
    var payload = inner.subarray(9, 9 + length);
    if (flags & 1) {
      try { payload = fzstd.decompress(payload); } catch (e) { throw fail(TAMPERED + what + " holds a damaged zstd frame"); }
    }
    return payload;
  }

  // -- the manifest ------------------------------------------------------------------
  async function loadManifest(link) {
    var objectKey = "s/" + link.id;
    var blob = await fetchBytes(objectKey);
    if (blob === 404) throw fail("revoked: this link was revoked by its owner, or never existed");
    if (blob === 403) throw fail("revoked, or the store does not allow anonymous reading: this link cannot be opened (ask its owner)");
    if (typeof blob === "number") throw fail("unreachable: the store answered HTTP " + blob + "; try again later");
    var payload = await openEnvelope(link.key, KIND_SHARE, objectKey, blob, "the share manifest");
    if (payload === null) throw fail("wrong key: this link's key does not open the share (check that the whole link was copied)");
    var version = payload[0];
    if (version === 0x7b) throw fail(TAMPERED + "the share manifest is unsigned but the link is signed (downgraded)");
    if (version !== 2 && version !== 3) throw fail("this share has manifest version " + version + ", which this page does not read");
    if (payload.length < 65) throw fail(TAMPERED + "the share manifest is truncated");
    var signature = payload.subarray(1, 65), body = payload.subarray(65);
    var message = concat([enc.encode("megafs v2 share manifest\0" + link.id + "\0"), body]);
    var ok;
    try {
      var pub = await subtle.importKey("raw", link.publicKey, { name: "Ed25519" }, false, ["verify"]);
      ok = await subtle.verify({ name: "Ed25519" }, pub, signature, message);
    } catch (e) {
      if (e && e.name === "NotSupportedError") throw fail("this browser cannot check Ed25519 signatures: use a current browser, or megafs get");
      ok = false;
    }
    if (!ok) throw fail(TAMPERED + "the share manifest is not signed by the link's owner (forged)");
    var raw;
    try { raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body)); } catch (e) {
      throw fail(TAMPERED + "the share manifest is not valid JSON");
    }
    return check(raw, version);
  }

  // Every field as hostile input, as megafs get does (megafs/store/manifest.py).
  function check(raw, version) {
    function bad(what) { return fail(TAMPERED + "the share manifest is malformed: " + what); }
    function int(v, what, lo, hi) {
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < lo || v > hi) throw bad(what + " is out of range");
      return v;
    }
    function component(c) {
      return c !== "" && c !== "." && c !== ".." && c.indexOf("/") < 0 && c.indexOf("\0") < 0 && enc.encode(c).length <= 255;
    }
    if (!raw || raw.v !== version) throw bad("it does not say version " + version);
    if (raw.kind !== "file" && raw.kind !== "dir") throw bad("its kind is neither file nor dir");
    var bs = int(raw.block_size, "the block size", MIN_BS, MAX_BS);
    if (!Array.isArray(raw.entries) || raw.entries.length < 1) throw bad("no entries");
    var width = version >= 3 ? 8 : 5, seen = new Set(), dirs = new Set([""]), entries = [];
    raw.entries.forEach(function (e, index) {
      if (!e || typeof e !== "object") throw bad("an entry is not an object");
      if (typeof e.path !== "string" || enc.encode(e.path).length > 4096) throw bad("a path is not a text");
      var parts = e.path === "" ? [] : e.path.split("/");
      if (!parts.every(component)) throw bad("the path " + JSON.stringify(e.path.slice(0, 60)) + " has an unsafe component");
      if (["dir", "file", "symlink"].indexOf(e.type) < 0) throw bad("an unknown type");
      if (index === 0 ? (e.path !== "" || e.type !== raw.kind || (raw.kind === "file" && raw.entries.length !== 1))
                      : (e.path === "" || seen.has(e.path) || !dirs.has(parts.slice(0, -1).join("/"))))
        throw bad(e.path + " is not where it belongs");
      seen.add(e.path);
      if (e.type === "dir") dirs.add(e.path);
      // nanoseconds lose precision as JavaScript numbers: only milliseconds are used
      if (typeof e.mtime_ns !== "number" || !Number.isInteger(e.mtime_ns) || Math.abs(e.mtime_ns) > Math.pow(2, 63))
        throw bad("a time is out of range");
      var out = { path: e.path, type: e.type, mtime: e.mtime_ns / 1e6, size: 0, blocks: [], target: "" };
      if (e.type === "symlink") {
        if (typeof e.target !== "string" || !e.target || e.target.indexOf("\0") >= 0 || enc.encode(e.target).length > 4096)
          throw bad(e.path + ": the symlink target is empty or too long");
        out.target = e.target;
      }
      int(e.mode, "a mode", 0, 4095);
      if (e.type === "file") {
        out.size = int(e.size, "a size", 0, MAX_SIZE);
        if (!Array.isArray(e.blocks)) throw bad("blocks is not a list");
        var numbers = new Set();
        e.blocks.forEach(function (b) {
          if (!Array.isArray(b) || b.length !== width) throw bad("a block is not a list of " + width);
          var n = int(b[0], "a block number", 0, Math.floor(MAX_SIZE / bs));
          if (numbers.has(n) || n * bs >= out.size) throw bad("block " + n + " is repeated or beyond the file's size");
          numbers.add(n);
          var length = int(b[3], "a block length", 0, Math.min(bs, out.size - n * bs));
          if (typeof b[1] !== "string" || !/^b\/[0-9a-f]{32}$/.test(b[1]) || typeof b[2] !== "string" ||
              !/^[0-9a-f]{64}$/.test(b[2]) || typeof b[4] !== "string" || !/^[0-9a-f]{64}$/.test(b[4]))
            throw bad("block " + n + " has a bad key or hash");
          var block = { number: n, id: b[1], key: fromHex(b[2]), length: length, sha256: b[4],
                        object: b[1], range: null };
          if (version >= 3) { // where the envelope is: a pack p/..., or the block's own b/ object
            if (typeof b[5] !== "string" || !/^[bp]\/[0-9a-f]{32}$/.test(b[5]) || (b[5][0] === "b" && b[5] !== b[1]))
              throw bad("block " + n + " names a bad object");
            block.object = b[5];
            block.range = [int(b[6], "an offset", 0, MAX_OFFSET),
                           int(b[7], "a stored length", MIN_ENVELOPE, Math.floor(bs * ENVELOPE_SLACK) + 4096)];
          }
          out.blocks.push(block);
        });
      }
      entries.push(out);
    });
    var name = typeof raw.name === "string" ? raw.name.replace(/\0/g, "").replace(/\/+$/, "").split("/").pop() : "";
    return { kind: raw.kind, name: component(name) ? name : "megafs-share", blockSize: bs, entries: entries };
  }

  // -- downloading -------------------------------------------------------------------
  var manifest = null, busy = false, progress = { done: 0, total: 0 };

  function setBusy(on) {
    busy = on;
    document.querySelectorAll("button").forEach(function (b) { b.disabled = on; });
    $("progress-box").hidden = !on && progress.done === 0;
  }

  function advance(n) {
    progress.done += n;
    var bar = $("progress");
    bar.max = Math.max(1, progress.total);
    bar.value = progress.done;
    $("progress-text").textContent = size(progress.done) + " of " + size(progress.total);
  }

  function blockName(entry, block) {
    return (entry.path || manifest.name) + ": block " + block.number;
  }

  // A block's envelope bytes, checked like megafs get does (megafs/cli/download.py):
  // exactly the listed length (version 3), the listed SHA-256 over exactly those bytes,
  // then the envelope of kind 1 under the block's key with its block id as the AAD's
  // object key (in a pack too), and the plaintext's length.
  async function openBlock(entry, block, blob) {
    var what = blockName(entry, block);
    if (block.range && blob.length !== block.range[1])
      throw fail(TAMPERED + what + " is missing from the store (its object is too short)");
    var digest = hex(new Uint8Array(await subtle.digest("SHA-256", blob)));
    if (digest !== block.sha256) throw fail(TAMPERED + what + " is not what the owner shared");
    var data = await openEnvelope(block.key, KIND_BLOCK, block.id, blob, what);
    if (data === null) throw fail(TAMPERED + what + " failed authentication (key commitment)");
    if (data.length !== block.length) throw fail(TAMPERED + what + " has the wrong length");
    return data;
  }

  // The requests for *items* ({entry, block}): a version 2 block is its whole object; the
  // envelopes of version 3 blocks in the same object are grouped into runs of
  // neighbours, each read with one Range GET and cut into the listed ranges.
  function plan(items) {
    var reads = [], byObject = new Map();
    items.forEach(function (item) {
      if (!item.block.range) { reads.push({ object: item.block.object, range: null, items: [item] }); return; }
      if (!byObject.has(item.block.object)) byObject.set(item.block.object, []);
      byObject.get(item.block.object).push(item);
    });
    byObject.forEach(function (list, object) {
      list.sort(function (a, b) { return a.block.range[0] - b.block.range[0]; });
      var run = null;
      list.forEach(function (item) {
        var start = item.block.range[0], end = start + item.block.range[1];
        if (run && start <= run.end + COALESCE_GAP && Math.max(run.end, end) - run.start <= COALESCE_MAX) {
          run.end = Math.max(run.end, end);
          run.items.push(item);
        } else {
          run = { object: object, start: start, end: end, items: [item] };
          reads.push(run);
        }
      });
    });
    return reads.map(function (r) {
      return r.range === null ? r : { object: r.object, range: [r.start, r.end - r.start], items: r.items };
    });
  }

  async function fetchRead(read, sink) {
    var blob = await fetchBytes(read.object, read.range);
    if (blob === 416) blob = new Uint8Array(0); // the object ends before the range: too short
    if (typeof blob === "number") {
      var what = blockName(read.items[0].entry, read.items[0].block);
      if (blob === 404 || blob === 403) throw fail(TAMPERED + what + " is missing from the store (HTTP " + blob + ")");
      throw fail("unreachable: the store answered HTTP " + blob + " for " + what);
    }
    for (var i = 0; i < read.items.length; i++) {
      var item = read.items[i], block = item.block, bytes = blob;
      if (read.range) {
        var from = block.range[0] - read.range[0];
        bytes = blob.subarray(Math.min(from, blob.length), Math.min(from + block.range[1], blob.length));
      }
      var data = await openBlock(item.entry, block, bytes);
      await sink(item.entry, block.number * manifest.blockSize, data);
      advance(block.length);
    }
  }

  // Verify every block of *entries*; hand each to sink(entry, offset, bytes) (in any order).
  async function readFiles(entries, sink) {
    var items = [];
    entries.forEach(function (entry) {
      entry.blocks.forEach(function (block) { items.push({ entry: entry, block: block }); });
    });
    var queue = plan(items);
    async function worker() {
      while (queue.length) await fetchRead(queue.shift(), sink);
    }
    var workers = [];
    for (var i = 0; i < PARALLEL; i++) workers.push(worker());
    await Promise.all(workers);
  }

  async function filesBytes(entries) {
    var bufs = new Map();
    entries.forEach(function (e) { bufs.set(e, new Uint8Array(e.size)); }); // holes stay zero
    await readFiles(entries, function (entry, offset, data) { bufs.get(entry).set(data, offset); });
    return bufs;
  }

  function save(blob, name) {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
  }

  // Larger than BLOB_LIMIT: stream to disk with the File System Access API. Chromium
  // writes to a temporary file and gives it its name only on close(); abort() drops it.
  async function streamFile(entry, name) {
    if (!window.showSaveFilePicker)
      throw fail("too large for this browser: files over " + size(BLOB_LIMIT) + " need the File System Access API (Chrome, Edge), or megafs get");
    var handle = await window.showSaveFilePicker({ suggestedName: name });
    var out = await handle.createWritable();
    try {
      await out.truncate(entry.size);
      await readFiles([entry], function (_, offset, data) { return out.write({ type: "write", position: offset, data: data }); });
      await out.close();
    } catch (e) {
      await out.abort().catch(function () {});
      throw e;
    }
  }

  async function run(task) {
    if (busy) return;
    progress = { done: 0, total: 0 };
    setBusy(true);
    setStatus("downloading", false);
    try {
      await task();
      setBusy(false);
      setStatus("done", false);
    } catch (e) {
      showError(e);
    }
  }

  function downloadFile(entry) {
    var name = entry.path ? entry.path.split("/").pop() : manifest.name;
    return run(async function () {
      progress.total = entry.size;
      advance(0);
      if (entry.size > BLOB_LIMIT) return streamFile(entry, name);
      var buf = (await filesBytes([entry])).get(entry);
      save(new Blob([buf], { type: "application/octet-stream" }), name);
    });
  }

  function downloadZip() {
    return run(async function () {
      var files = manifest.entries.filter(function (e) { return e.type === "file"; });
      progress.total = files.reduce(function (n, e) { return n + e.size; }, 0);
      advance(0);
      if (progress.total > BLOB_LIMIT)
        throw fail("too large for a .zip in the browser (over " + size(BLOB_LIMIT) + "): download the files one by one, or use megafs get");
      var bufs = await filesBytes(files); // all of them: neighbours share Range GETs
      var zip = new ZipWriter(), prefix = manifest.name + "/";
      zip.add(prefix, null, Date.now());
      for (var i = 1; i < manifest.entries.length; i++) {
        var e = manifest.entries[i];
        if (e.type === "dir") zip.add(prefix + e.path + "/", null, e.mtime);
        else if (e.type === "file") zip.add(prefix + e.path, bufs.get(e), e.mtime);
      }
      save(zip.finish(), manifest.name + ".zip");
    });
  }

  // -- a store-only .zip (PKZIP APPNOTE 4.3.7, no compression, UTF-8 names) ----------
  var CRC_TABLE = (function () {
    var t = new Uint32Array(256);
    for (var n = 0; n < 256; n++) {
      var c = n;
      for (var k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(data) {
    var c = 0xffffffff;
    for (var i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function ZipWriter() { this.parts = []; this.central = []; this.offset = 0; }
  ZipWriter.prototype.add = function (name, data, mtimeMs) {
    var nameBytes = enc.encode(name), body = data || new Uint8Array(0), crc = crc32(body);
    var d = new Date(Math.max(mtimeMs, 315532800000)); // DOS times start in 1980
    var time = (d.getHours() << 11) | (d.getMinutes() << 5) | (d.getSeconds() >> 1);
    var date = ((d.getFullYear() - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate();
    function header(sig, central) {
      var h = new DataView(new ArrayBuffer(central ? 46 : 30)), o = 0;
      function u16(v) { h.setUint16(o, v, true); o += 2; }
      function u32(v) { h.setUint32(o, v >>> 0, true); o += 4; }
      u32(sig);
      if (central) u16(0x0314); // made by: Unix, 2.0
      u16(20); u16(0x0800); u16(0); u16(time); u16(date); // version, UTF-8 flag, stored
      u32(crc); u32(body.length); u32(body.length); u16(nameBytes.length); u16(0);
      return h;
    }
    var local = header(0x04034b50, false);
    var c = header(0x02014b50, true);
    c.setUint16(32, 0, true); c.setUint16(34, 0, true); c.setUint16(36, 0, true);
    c.setUint32(38, (data ? 0o100644 : 0o040755) * 65536 + (data ? 0 : 0x10), true);
    c.setUint32(42, this.offset, true);
    this.parts.push(new Uint8Array(local.buffer), nameBytes, body);
    this.central.push(new Uint8Array(c.buffer), nameBytes);
    this.offset += 30 + nameBytes.length + body.length;
    this.count = (this.count || 0) + 1;
  };
  ZipWriter.prototype.finish = function () {
    var dirSize = this.central.reduce(function (n, p) { return n + p.length; }, 0);
    var end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, this.count, true); end.setUint16(10, this.count, true);
    end.setUint32(12, dirSize, true); end.setUint32(16, this.offset, true);
    return new Blob(this.parts.concat(this.central, [new Uint8Array(end.buffer)]), { type: "application/zip" });
  };

  // -- the page --------------------------------------------------------------------
  function show() {
    $("name").textContent = manifest.name;
    var files = manifest.entries.filter(function (e) { return e.type === "file"; });
    var total = files.reduce(function (n, e) { return n + e.size; }, 0);
    $("summary").textContent = manifest.kind === "file" ? size(total)
      : "a folder: " + files.length + " file" + (files.length === 1 ? "" : "s") + ", " + size(total);
    var button = $("download");
    button.textContent = manifest.kind === "file" ? "Download" : "Download everything (.zip)";
    button.addEventListener("click", function () {
      if (manifest.kind === "file") downloadFile(manifest.entries[0]); else downloadZip();
    });
    button.hidden = false;
    if (manifest.kind === "dir") {
      var list = $("files");
      files.forEach(function (e) {
        var li = document.createElement("li");
        var label = document.createElement("span");
        label.textContent = e.path + " (" + size(e.size) + ")";
        var b = document.createElement("button");
        b.type = "button";
        b.textContent = "Download";
        b.setAttribute("aria-label", "Download " + e.path);
        b.addEventListener("click", function () { downloadFile(e); });
        li.append(label, " ", b);
        list.appendChild(li);
      });
      manifest.entries.forEach(function (e) {
        if (e.type !== "symlink") return;
        var li = document.createElement("li");
        li.textContent = e.path + " \u2192 " + e.target + " (a symbolic link: megafs get recreates it)";
        list.appendChild(li);
      });
      list.hidden = false;
    }
    setStatus("ready", false);
    button.focus();
  }

  async function start() {
    try {
      if (!subtle) throw fail("this page needs WebCrypto: open it over https (or from localhost)");
      manifest = await loadManifest(parseLink());
      show();
    } catch (e) {
      showError(e);
    }
  }

  window.addEventListener("hashchange", function () { location.reload(); });
  start();
})();
