/**
 * The entry point. `--version` is answered here, before the rest of the program is even
 * evaluated: start-up time matters for a command that runs in every unit's ExecStartPre=.
 * Everything else loads main.ts, the composition root.
 */
import { version } from "./buildInfo.ts"
import { isElevated, refusedVariable } from "./services/ElevatedEnvironment.ts"

// Output is best effort: a closed or read-only stdout/stderr (a set-user-ID exec puts a read-only
// /dev/null on closed descriptors) or a closed pipe must not turn a finished run into a crash.
process.stdout.on("error", () => {})
process.stderr.on("error", () => {})

const args = process.argv.slice(2)
const versionOnly = args.length === 1 && (args[0] === "--version" || args[0] === "-version")
// An environment that an elevated run must refuse goes to main.ts, which says why (exit 77).
const refused = isElevated() && refusedVariable(process.env, process.channel !== undefined) !== undefined

if (versionOnly && !refused) process.stdout.write(`op-secret-manager ${version}\n`)
else void import("./main.ts")
