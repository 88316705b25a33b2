/**
 * The entry point. `--version` is answered here, before the rest of the program is evaluated:
 * start-up time matters for a command that runs in every unit's ExecStartPre=. Everything else
 * runs main.ts, the composition root.
 *
 * The single executable is built with a V8 start-up snapshot: at build time this file evaluates
 * main.ts (every module of the program) into the snapshot, and the executable starts from that
 * heap instead of compiling and evaluating a megabyte of JavaScript on every run.
 */
import * as v8 from "node:v8"
import { version } from "./buildInfo.ts"
import { isElevated, refusedVariable } from "./services/ElevatedEnvironment.ts"

type Program = { readonly run: () => void }

const start = (program?: Program) => {
  // Output is best effort: a closed or read-only stdout/stderr (a set-user-ID exec puts a read-only
  // /dev/null on closed descriptors) or a closed pipe must not turn a finished run into a crash.
  process.stdout.on("error", () => {})
  process.stderr.on("error", () => {})

  const args = process.argv.slice(2)
  const versionOnly = args.length === 1 && (args[0] === "--version" || args[0] === "-version")
  // An environment that an elevated run must refuse goes to main.ts, which says why (exit 77).
  const refused = isElevated() && refusedVariable(process.env, process.channel !== undefined) !== undefined

  if (versionOnly && !refused) process.stdout.write(`op-secret-manager ${version}\n`)
  else if (program !== undefined) program.run()
  else void import("./main.ts").then((main) => main.run())
}

if (v8.startupSnapshot.isBuildingSnapshot()) {
  void import("./main.ts").then((main) => v8.startupSnapshot.setDeserializeMainFunction(() => start(main)))
} else {
  start()
}
