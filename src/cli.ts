/**
 * The command line as values (@effect/cli). It defines; main.ts runs and chooses layers.
 *
 *   op-secret-manager [fetch] [--tags T1,T2] [--untagged] [--serialize] [-v|--verbose] [--json]
 *                     [--api-key-path P] [--map-file-path P] [--secrets-dir D]
 *   op-secret-manager --cleanup [same options]   (also: op-secret-manager cleanup ...)
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import { defaultApiKeyPath, defaultMapFilePath } from "./buildInfo.ts"
import { describeFailure, type Failure } from "./exitCodes.ts"
import { checkLines, checkMapfile, MapfileCheckFailed } from "./programs/check.ts"
import { cleanupSecrets } from "./programs/cleanup.ts"
import { DoctorFailed, doctorLines, runDoctor } from "./programs/doctor.ts"
import { install, installLines } from "./programs/install.ts"
import { fetchSecrets } from "./programs/fetch.ts"
import type { RunRequest } from "./programs/prepare.ts"
import { humanLines, type RunReport } from "./programs/report.ts"
import { parseTags } from "./services/Mapfile.ts"
import type { ElevatedRead, ElevatedReadRequest, UnprivilegedCaller } from "./services/Privileges.ts"
import type { SecretProvider } from "./services/SecretProvider.ts"
import type { SecretWriter } from "./services/SecretWriter.ts"
import type { UserLock } from "./services/UserLock.ts"

/** An empty value counts as unset, as in the original tool. */
const nonEmpty = (option: Options.Options<Option.Option<string>>) =>
  Options.map(option, Option.filter((value) => value.length > 0))

const shared = {
  tags: Options.text("tags").pipe(
    Options.withDescription("Only entries with one of these comma-separated tags (env: OP_TAGS)"),
    Options.withFallbackConfig(Config.string("OP_TAGS")),
    Options.optional,
    nonEmpty
  ),
  untagged: Options.boolean("untagged").pipe(
    Options.withDescription("Only untagged entries; with --tags, untagged entries too (env: OP_UNTAGGED=true)"),
    Options.withFallbackConfig(Config.boolean("OP_UNTAGGED").pipe(Config.withDefault(false)))
  ),
  serialize: Options.boolean("serialize").pipe(
    Options.withDescription("Wait for other runs of the same user (flock on op-secret-manager.lock beside the secrets directory)")
  ),
  lockTimeout: Options.integer("lock-timeout").pipe(
    Options.withDescription("With --serialize: seconds to wait for the lock before giving up with exit 75"),
    Options.withDefault(300)
  ),
  verbose: Options.boolean("verbose").pipe(
    Options.withAlias("v"),
    Options.withDescription("Explain each step on stderr (never secret values)")
  ),
  json: Options.boolean("json").pipe(
    Options.withDescription("Print one JSON document describing what was done (no values)")
  ),
  quiet: Options.boolean("quiet").pipe(
    Options.withAlias("q"),
    Options.withDescription("Print only warnings and errors (for scripts)")
  ),
  apiKeyPath: Options.text("api-key-path").pipe(
    Options.withDescription(`Credential file (env: OP_API_KEY_PATH; default ${defaultApiKeyPath}); refused when set-user-ID`),
    Options.withFallbackConfig(Config.string("OP_API_KEY_PATH")),
    Options.optional,
    nonEmpty
  ),
  mapFilePath: Options.text("map-file-path").pipe(
    Options.withDescription(`Mapfile (env: OP_MAP_FILE_PATH; default ${defaultMapFilePath}); refused when set-user-ID`),
    Options.withFallbackConfig(Config.string("OP_MAP_FILE_PATH")),
    Options.optional,
    nonEmpty
  ),
  // Plain text, not Options.directory: that would stat the path while parsing, still elevated.
  // The directory is resolved and used only after the drop, as the caller.
  secretsDir: Options.text("secrets-dir").pipe(
    Options.withDescription("Base directory for relative mapfile paths (default /run/user/<uid>/secrets)"),
    Options.optional,
    nonEmpty
  )
}

export type SharedOptions = Command.Command.ParseConfig<typeof shared>

export type Mode = "fetch" | "cleanup"

/** What the elevated phase must read for this invocation (main.ts builds the layers from it). */
export const elevatedReadRequest = (options: SharedOptions, mode: Mode): ElevatedReadRequest => ({
  apiKeyPath: Option.map(options.apiKeyPath, (path) => ({ path, source: "--api-key-path / OP_API_KEY_PATH" })),
  mapFilePath: Option.map(options.mapFilePath, (path) => ({ path, source: "--map-file-path / OP_MAP_FILE_PATH" })),
  readCredential: mode === "fetch"
})

const runRequest = (options: SharedOptions): RunRequest => ({
  filter: { tags: Option.match(options.tags, { onNone: () => [], onSome: parseTags }), untagged: options.untagged },
  secretsDir: options.secretsDir,
  serialize: options.serialize,
  lockTimeout: Duration.seconds(Math.max(0, options.lockTimeout))
})

const failedFiles = (failure: Failure) =>
  failure._tag === "ReferencesUnresolved"
    ? failure.failures.map(({ reference, reason }) => ({ reference, status: "failed", reason }))
    : []

const present = (report: RunReport, options: SharedOptions) =>
  options.json
    ? Console.log(JSON.stringify({ ok: true, ...report }))
    : options.quiet
    ? Effect.void
    : Effect.forEach(humanLines(report, options.verbose), (line) => Console.log(line), { discard: true })

/** Everything fetch and cleanup run against; main.ts decides how it is built. */
export type RunServices = ElevatedRead | UnprivilegedCaller | SecretProvider | SecretWriter | UserLock

export type ChooseLayers = (options: SharedOptions, mode: Mode) => Layer.Layer<RunServices, Failure>

/** How main.ts builds each command's services: the only place that picks live layers. */
export interface LiveLayers {
  readonly run: ChooseLayers
  /** check: the mapfile read (the given path, or the installed one), then the drop. */
  readonly check: (mapFilePath: Option.Option<string>) => Layer.Layer<ElevatedRead | UnprivilegedCaller, Failure>
  /** doctor and install read nothing elevated: only the drop. */
  readonly unprivileged: Layer.Layer<UnprivilegedCaller, Failure>
}

const withLogLevel = (options: { readonly verbose?: boolean; readonly quiet?: boolean }) =>
  Logger.withMinimumLogLevel(options.verbose === true ? LogLevel.Debug : options.quiet === true ? LogLevel.Warning : LogLevel.Info)

const printLines = (lines: ReadonlyArray<string>) => Effect.forEach(lines, (line) => Console.log(line), { discard: true })

const run = (mode: Mode, options: SharedOptions, layers: ChooseLayers) =>
  Effect.suspend(() => mode === "fetch" ? fetchSecrets(runRequest(options)) : cleanupSecrets(runRequest(options))).pipe(
    Effect.flatMap((report) => present(report, options)),
    Effect.provide(layers(options, mode)),
    Effect.tapError((failure) =>
      options.json
        ? Console.log(JSON.stringify({
          ok: false,
          command: mode,
          error: describeFailure(failure),
          files: failedFiles(failure)
        }))
        : Effect.void
    ),
    withLogLevel(options)
  )

/**
 * The command tree. Layers are chosen per invocation from the parsed options (the elevated read
 * depends on them), by the caller: main.ts is the only place that picks live layers.
 */
const checkCommand = (layers: LiveLayers) =>
  Command.make(
    "check",
    {
      mapFilePath: Options.text("map-file-path").pipe(
        Options.withDescription(`Mapfile to check (default ${defaultMapFilePath}); refused when set-user-ID, except for root`),
        Options.optional,
        nonEmpty
      ),
      json: shared.json
    },
    (options) =>
      checkMapfile.pipe(
        Effect.tap((report) =>
          options.json ? Console.log(JSON.stringify({ ok: !report.findings.some((f) => f.severity === "error"), ...report })) : printLines(checkLines(report))
        ),
        Effect.flatMap((report) => {
          const errors = report.findings.filter((f) => f.severity === "error").length
          return errors > 0 ? Effect.fail(new MapfileCheckFailed({ path: report.path, errors })) : Effect.void
        }),
        Effect.provide(layers.check(options.mapFilePath))
      )
  ).pipe(Command.withDescription("Lint a mapfile: malformed lines, bad references and paths, duplicate targets, unknown users, lone tags"))

const doctorCommand = (layers: LiveLayers) =>
  Command.make("doctor", { json: shared.json }, (options) =>
    runDoctor.pipe(
      Effect.tap((checks) => (options.json ? Console.log(JSON.stringify({ ok: !checks.some((c) => c.status === "fail"), checks })) : printLines(doctorLines(checks)))),
      Effect.flatMap((checks) => {
        const failed = checks.filter((c) => c.status === "fail").length
        return failed > 0 ? Effect.fail(new DoctorFailed({ failed })) : Effect.void
      }),
      Effect.provide(layers.unprivileged)
    )).pipe(Command.withDescription("Audit the installation: modes, owners, mount options, config files, users' runtime directories"))

const installCommand = (layers: LiveLayers) =>
  Command.make(
    "install",
    {
      serviceUser: Options.text("service-user").pipe(Options.withDescription("The service account to create and run as"), Options.withDefault("op")),
      prefix: Options.text("prefix").pipe(Options.withDescription("Installs the executable as PREFIX/bin/op-secret-manager"), Options.withDefault("/usr/local")),
      dryRun: Options.boolean("dry-run").pipe(Options.withDescription("Print every step without doing it"))
    },
    (options) =>
      install(options).pipe(
        Effect.flatMap((steps) => printLines(installLines(steps, options.dryRun))),
        Effect.provide(layers.unprivileged)
      )
  ).pipe(Command.withDescription("Set up this host (root): service account, set-user-ID executable, config files"))

/**
 * The command tree. Layers are chosen per invocation from the parsed options (the elevated read
 * depends on them), by the caller: main.ts is the only place that picks live layers.
 */
export const makeCommand = (layers: LiveLayers) =>
  Command.make(
    "op-secret-manager",
    {
      ...shared,
      cleanup: Options.boolean("cleanup").pipe(Options.withDescription("Remove the selected secret files instead of writing them"))
    },
    (options) => run(options.cleanup ? "cleanup" : "fetch", options, layers.run)
  ).pipe(
    Command.withDescription("Write the caller's 1Password secrets as files under /run/user/<uid>/secrets"),
    Command.withSubcommands([
      Command.make("fetch", shared, (options) => run("fetch", options, layers.run)).pipe(
        Command.withDescription("Write the caller's selected secrets (the default)")
      ),
      Command.make("cleanup", shared, (options) => run("cleanup", options, layers.run)).pipe(
        Command.withDescription("Remove the caller's selected secret files")
      ),
      checkCommand(layers),
      doctorCommand(layers),
      installCommand(layers)
    ])
  )

/** The original tool used Go's flag package, which also accepts `-cleanup`, `-tags=x` and so on. */
const GO_STYLE_FLAGS = new Set(["cleanup", "tags", "untagged", "verbose", "version", "api-key-path", "map-file-path", "serialize", "json", "secrets-dir", "help", "quiet"])

export const normalizeArgs = (argv: ReadonlyArray<string>): Array<string> => {
  const [runtime = "node", script = "op-secret-manager", ...rest] = argv
  const end = rest.indexOf("--")
  return [runtime, script, ...rest.map((arg, i) => {
    if ((end !== -1 && i > end) || !/^-[a-z]/.test(arg)) return arg
    const name = arg.slice(1).split("=")[0] ?? ""
    return GO_STYLE_FLAGS.has(name) ? `-${arg}` : arg
  })]
}
