# Sums up a `cargo test --no-fail-fast` log for scripts/ci/test.sh: the
# skipped and failing tests, how to rerun one, the tests that did not run,
# and one closing line "N passed, N failed, N skipped" (the form CI reads).
#   awk -v skips=FILE -f scripts/ci/test-summary.awk LOG
# FILE holds "BINARY TEST" lines, one per test that returned early through
# the skip rule (tests/common's cannot_run), which cargo counts as passed.
# Exits 1 when a test failed or did not run.

# How to select a test binary with cargo, from its "Running" line.
function target(src) {
  if (src ~ /^tests\/.*\.rs$/) { sub(/^tests\//, "", src); sub(/\.rs$/, "", src); return "--test " src }
  if (src == "src/lib.rs") return "--lib"
  if (src == "src/main.rs") return "--bin layerfs"
  if (src ~ /^src\/bin\/.*\.rs$/) { sub(/^src\/bin\//, "", src); sub(/\.rs$/, "", src); return "--bin " src }
  return src
}

# Counts what the binary before the next one ran. Its "test result:" line
# has the counts; without one it did not finish, and the tests it announced
# but never reported did not run.
function close_binary() {
  if (cur == "") return
  if (result) {
    passed += rp - skipped_ok; failed += rf; skipped += ri + skipped_ok
  } else {
    passed += lp - skipped_ok; failed += lf; skipped += li + skipped_ok
    if (announced > lp + lf + li) {
      notrun += announced - (lp + lf + li)
      lost = lost (lost == "" ? "" : ", ") curname
    }
  }
  cur = ""; result = 0; announced = 0; lp = lf = li = skipped_ok = 0
}

BEGIN {
  if (skips != "")
    while ((getline line < skips) > 0) skipped_here[line] = 1
}

/^ +Running / {
  close_binary()
  # "Running tests/x.rs (target/release/deps/x-HASH)", "Running unittests src/lib.rs (...)"
  line = $0; sub(/^ +Running (unittests )?/, "", line)
  src = line; sub(/ \(.*$/, "", src)
  exe = line; sub(/^.*\(/, "", exe); sub(/\)$/, "", exe); sub(/^.*\//, "", exe)
  cur = exe; curname = src; cursel = target(src)
  next
}
/^ +Doc-tests / { close_binary(); cur = "doc"; curname = "doc tests"; cursel = "--doc"; next }
/^running [0-9]+ tests?$/ { announced = $2; next }
/^test result: / { result = 1; rp = $4; rf = $6; ri = $8; next }
# Output of a test's child processes is not captured and may share the line.
match($0, /test [^ ]+ \.\.\. (ok|FAILED|ignored)/) {
  s = substr($0, RSTART + 5, RLENGTH - 5)
  name = s; sub(/ .*$/, "", name)
  outcome = s; sub(/^.* /, "", outcome)
  if (outcome == "ok") {
    lp++
    if ((cur " " name) in skipped_here) {
      skipped_ok++; skipnames = skipnames "\n  " curname ": " name
    }
  } else if (outcome == "FAILED") {
    lf++; failnames = failnames "\n  " curname ": " name
    if (rerun == "") rerun = "cargo test --release " cursel " -- --exact " name
  } else {
    li++; skipnames = skipnames "\n  " curname ": " name " (ignored)"
  }
}
END {
  close_binary()
  if (skipnames != "") print "\nskipped:" skipnames
  if (failnames != "") {
    print "\nfailed:" failnames
    print "\nrerun one (add --nocapture to see its output):\n  " rerun
  }
  print ""
  if (notrun > 0) printf "%d not run (a test binary that did not finish: %s)\n", notrun, lost
  printf "%d passed, %d failed, %d skipped\n", passed, failed, skipped
  exit (failed > 0 || notrun > 0)
}
