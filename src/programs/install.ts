/**
 * install: sets up this host from the running single executable, idempotently (root only).
 * The service account (system user, no shell, no home, no extra groups), the executable
 * (svc:svc 6755), the config directory (root:root 0755), the credential file (svc:svc 0600,
 * created empty, never overwritten) and the mapfile (root:svc 0640, a commented example, never
 * overwritten). `--dry-run` prints every step without doing it; a second run changes nothing.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { execFileSync } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import * as fs from "node:fs"
import { posix } from "node:path"
import { defaultApiKeyPath, defaultMapFilePath, sysconfdir } from "../buildInfo.ts"
import { libc } from "../native/libc.ts"
import { Unprivileged } from "../services/Privileges.ts"

export interface InstallRequest {
  readonly serviceUser: string
  readonly prefix: string
  readonly dryRun: boolean
}

/** Only root installs (exit 77). */
export class InstallNeedsRoot extends Data.TaggedError("InstallNeedsRoot")<{}> {}

/** install runs from the single executable, which it copies (exit 64). */
export class InstallNeedsExecutable extends Data.TaggedError("InstallNeedsExecutable")<{
  readonly running: string
}> {}

/** A step failed (exit 73); the steps before it were done and are reported. */
export class InstallFailed extends Data.TaggedError("InstallFailed")<{
  readonly step: string
  readonly reason: string
}> {}

export interface Step {
  readonly step: string
  readonly changed: boolean
}

const EXAMPLE_MAPFILE = `# op-secret-manager mapfile: which user gets which secret, written where.
#
#   <username>  <secret-reference>  <path>  [tags]
#
# Relative paths go under /run/user/<uid>/secrets/ of that user; absolute paths are written with
# the user's own permissions. Quote a field that holds spaces. Tags are comma-separated.
#
# postgres  op://Production/postgres/password          db_password     db
# app       "op://Prod Vault/Stripe API/credential"     stripe_key      web,payments
`

const sha256 = (path: string) => createHash("sha256").update(fs.readFileSync(path)).digest("hex")

const stat = (path: string) => fs.statSync(path, { throwIfNoEntry: false })

export const install = (request: InstallRequest) =>
  Effect.gen(function*() {
    const { caller } = yield* Unprivileged
    if (caller.uid !== 0) return yield* Effect.fail(new InstallNeedsRoot())
    if (!process.getBuiltinModule("node:sea").isSea()) {
      return yield* Effect.fail(new InstallNeedsExecutable({ running: process.execPath }))
    }
    const steps: Array<Step> = []
    const step = (description: string, needed: boolean, apply: () => void) =>
      Effect.try({
        try: () => {
          if (needed && !request.dryRun) apply()
          steps.push({ step: description, changed: needed })
        },
        catch: (error) => new InstallFailed({ step: description, reason: error instanceof Error ? error.message : String(error) })
      })
    const native = libc()
    const svc = request.serviceUser

    yield* step(`service account ${svc}: system user, no shell, no home`, native.passwdByName(svc) === undefined, () =>
      execFileSync("useradd", ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", svc], { stdio: "pipe" }))
    // In a dry run the account may not exist yet: its ids are then unknown, the steps still print.
    const account = native.passwdByName(svc) ?? { uid: -1, gid: -1 }

    const target = posix.join(request.prefix, "bin", "op-secret-manager")
    const current = stat(target)
    const source = fs.realpathSync(process.execPath)
    const sameBytes = current !== undefined && current.size === fs.statSync(source).size && sha256(target) === sha256(source)
    const rightModes = current !== undefined && current.uid === account.uid && current.gid === account.gid && (current.mode & 0o7777) === 0o6755
    yield* step(`executable ${target}: ${svc}:${svc} mode 6755`, !(sameBytes && rightModes), () => {
      fs.mkdirSync(posix.dirname(target), { recursive: true, mode: 0o755 })
      const staged = `${target}.${randomBytes(6).toString("hex")}.tmp`
      try {
        fs.copyFileSync(source, staged)
        // chown before chmod: chown clears the set-user-ID and set-group-ID bits.
        fs.chownSync(staged, account.uid, account.gid)
        fs.chmodSync(staged, 0o6755)
        fs.renameSync(staged, target)
      } finally {
        fs.rmSync(staged, { force: true })
      }
    })

    const dir = stat(sysconfdir)
    yield* step(`config directory ${sysconfdir}: root:root mode 0755`, dir === undefined || dir.uid !== 0 || dir.gid !== 0 || (dir.mode & 0o7777) !== 0o755, () => {
      fs.mkdirSync(sysconfdir, { recursive: true, mode: 0o755 })
      fs.chownSync(sysconfdir, 0, 0)
      fs.chmodSync(sysconfdir, 0o755)
    })

    const api = stat(defaultApiKeyPath)
    yield* step(
      `credential file ${defaultApiKeyPath}: ${svc}:${svc} mode 0600${api === undefined ? ", created empty" : ", content kept"}`,
      api === undefined || api.uid !== account.uid || api.gid !== account.gid || (api.mode & 0o7777) !== 0o600,
      () => {
        if (api === undefined) fs.writeFileSync(defaultApiKeyPath, "", { mode: 0o600, flag: "wx" })
        fs.chownSync(defaultApiKeyPath, account.uid, account.gid)
        fs.chmodSync(defaultApiKeyPath, 0o600)
      }
    )

    const map = stat(defaultMapFilePath)
    yield* step(
      `mapfile ${defaultMapFilePath}: root:${svc} mode 0640${map === undefined ? ", created with a commented example" : ", content kept"}`,
      map === undefined || map.uid !== 0 || map.gid !== account.gid || (map.mode & 0o7777) !== 0o640,
      () => {
        if (map === undefined) fs.writeFileSync(defaultMapFilePath, EXAMPLE_MAPFILE, { mode: 0o640, flag: "wx" })
        fs.chownSync(defaultMapFilePath, 0, account.gid)
        fs.chmodSync(defaultMapFilePath, 0o640)
      }
    )
    return steps
  })

export const installLines = (steps: ReadonlyArray<Step>, dryRun: boolean): Array<string> => {
  const lines = steps.map(({ step, changed }) => `${changed ? (dryRun ? "would change" : "changed") : "ok"}  ${step}`)
  lines.push(steps.some((s) => s.changed) ? (dryRun ? "dry run: nothing was changed" : "installed") : "nothing to change: already installed")
  return lines
}
