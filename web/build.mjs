// Build the self-contained download page megafs/web/megafs.html from src/ and fzstd.
//   node build.mjs [OUTPUT]      (default: ../megafs/web/megafs.html)
// Deterministic: the same sources and package-lock.json give the same bytes
// (tests/test_web_build.py rebuilds it and compares with the checked-in copy).
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const read = (...p) => readFileSync(join(here, ...p), "utf8");
const fzstdPkg = JSON.parse(read("node_modules", "fzstd", "package.json"));
const licence = read("node_modules", "fzstd", "LICENSE").trim().replace(/\*\//g, "* /");
const script = [
  `/* fzstd ${fzstdPkg.version} (https://github.com/101arrowz/fzstd), bundled unchanged:\n${licence}\n*/`,
  read("node_modules", "fzstd", "umd", "index.js").trim(),
  read("src", "main.js").trim(),
].join("\n") + "\n";
const style = read("src", "style.css").trim();
const hash = (text) => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`;
const csp = ["default-src 'none'", `script-src ${hash(script)}`, `style-src ${hash(style)}`,
             "connect-src 'self'", "img-src data:", "base-uri 'none'", "form-action 'none'"].join("; ");
const page = read("src", "page.html")
  .replace("@CSP@", () => csp).replace("@STYLE@", () => style).replace("@SCRIPT@", () => script);
if (page.includes("</script>", page.indexOf("<script>") + 8) !== true || script.includes("</script"))
  throw new Error("the script must not contain </script");
const out = process.argv[2] || join(here, "..", "megafs", "web", "megafs.html");
writeFileSync(out, page);
