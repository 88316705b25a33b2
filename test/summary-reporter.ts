/** Ends the run with one plain line, `N passed, N failed, N skipped`, that any CI log reader understands. */
import type { Reporter, TestModule } from "vitest/node"

export default class SummaryReporter implements Reporter {
  private modules: ReadonlyArray<TestModule> = []

  onTestRunEnd(testModules: ReadonlyArray<TestModule>) {
    this.modules = testModules
  }

  // Runs after the default reporter's summary, so this stays the last line of the log.
  onFinished() {
    const testModules = this.modules
    const counts = { passed: 0, failed: 0, skipped: 0 }
    for (const module of testModules) {
      for (const test of module.children.allTests()) {
        const state = test.result().state
        if (state === "passed") counts.passed++
        else if (state === "failed") counts.failed++
        else counts.skipped++
      }
    }
    process.stdout.write(`\n${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped\n`)
  }
}
