/**
 * Composition root: environment policy, the command line, the live layers, the exit code.
 * The only module that chooses live layers.
 */
import * as Command from "@effect/cli/Command"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeTerminal from "@effect/platform-node/NodeTerminal"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import { version } from "./buildInfo.ts"
import { elevatedReadRequest, makeCommand, type Mode, normalizeArgs, type SharedOptions } from "./cli.ts"
import { describeFailure, EX, isFailure } from "./exitCodes.ts"
import { libc } from "./native/libc.ts"
import { colourAllowed, formatLine, plainConsole, stderrIsJournal, stderrLogger } from "./services/Output.ts"
import { dropEarlyForRoot, ElevatedReadLive, enforceElevatedEnvironment, UnprivilegedLive, UnprivilegedWithoutRead } from "./services/Privileges.ts"
import { SecretProviderLive } from "./services/SecretProvider.ts"
import { SecretWriterLive } from "./services/SecretWriter.ts"
import { UserLockLive } from "./services/UserLock.ts"

/** Built strictly in dependency order: read (elevated) -> drop -> everything that needs the drop. */
const liveLayers = (options: SharedOptions, mode: Mode) =>
  Layer.mergeAll(SecretProviderLive, SecretWriterLive, UserLockLive).pipe(
    Layer.provideMerge(UnprivilegedLive),
    Layer.provideMerge(ElevatedReadLive(elevatedReadRequest(options, mode)))
  )

const checkLayers = (mapFilePath: Option.Option<string>) =>
  UnprivilegedLive.pipe(
    Layer.provideMerge(Layer.unwrapEffect(Effect.as(
      dropEarlyForRoot,
      ElevatedReadLive({
        mapFilePath: Option.map(mapFilePath, (path) => ({ path, source: "--map-file-path" })),
        apiKeyPath: Option.none(),
        readCredential: false
      })
    )))
  )

const cli = Command.run(makeCommand({ run: liveLayers, check: checkLayers, unprivileged: UnprivilegedWithoutRead }), {
  name: "op-secret-manager",
  version
})

const fail = (code: number, message: string, journal: boolean) =>
  Effect.sync(() => {
    process.stderr.write(formatLine("error", message, journal))
    return code
  })

/** Everything depends on this process's environment, so it is computed per run (never in the snapshot). */
const main = (args: ReadonlyArray<string>, journal: boolean) => enforceElevatedEnvironment.pipe(
  Effect.zipRight(cli(args)),
  Effect.as(EX.OK),
  Effect.catchAll((error: unknown) => {
    // @effect/cli has already printed the problem and the usage.
    if (ValidationError.isValidationError(error)) return Effect.succeed<number>(EX.USAGE)
    if (isFailure(error)) {
      const { code, message } = describeFailure(error)
      // Node acts on some refused variables at exit (NODE_V8_COVERAGE writes coverage files, as the
      // service account, wherever the caller pointed it): leave without running exit hooks.
      if (error._tag === "UnsafeEnvironment") return fail(code, message, journal).pipe(Effect.map((code) => libc().exitImmediately(code)))
      return fail(code, message, journal)
    }
    return fail(EX.SOFTWARE, "internal error", journal)
  }),
  // What @effect/cli needs, and no more: NodeContext would also load child_process and workers.
  Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, NodeTerminal.layer)),
  Effect.provide(Logger.replace(Logger.defaultLogger, stderrLogger(journal))),
  (program) => (colourAllowed() ? program : Effect.flatMap(plainConsole, (console) => Effect.withConsole(program, console)))
)

/**
 * Runs the command line of this process. Nothing above has side effects, so the single
 * executable can evaluate this module into its start-up snapshot at build time.
 */
export const run = (): void => {
  // A caller's RLIMIT_FSIZE must make a write fail with EFBIG (the writer then rolls back), not
  // kill the process in the middle of staging.
  process.on("SIGXFSZ", () => {})

  // SIGINT/SIGTERM interrupt the run (runMain); the exit code says which one arrived.
  let signalCode: number | undefined
  process.once("SIGINT", () => (signalCode ??= 130))
  process.once("SIGTERM", () => (signalCode ??= 143))

  const journal = stderrIsJournal()
  NodeRuntime.runMain(main(normalizeArgs(process.argv), journal), {
    disableErrorReporting: true,
    disablePrettyLogger: true,
    teardown: (exit, onExit) => {
      // A signal that arrived during synchronous work (the commit) has not been dispatched yet:
      // let the event loop poll once (between two check phases), so that a run stopped by SIGTERM
      // says so even if it completed.
      if (Exit.isSuccess(exit)) {
        const code = typeof exit.value === "number" ? exit.value : EX.SOFTWARE
        return void setImmediate(() => setImmediate(() => onExit(signalCode ?? code)))
      }
      if (Cause.isInterruptedOnly(exit.cause)) return onExit(signalCode ?? 130)
      // A defect: its details may hold anything; say little.
      process.stderr.write(formatLine("error", "internal error", journal))
      onExit(EX.SOFTWARE)
    }
  })
}
