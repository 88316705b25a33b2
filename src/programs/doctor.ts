/**
 * doctor: audits the installation, one line per check (ok, warn, fail, skip) with the exact
 * command that fixes it. Any user may run it; root sees more (the credential's content, the
 * mapfile's lines, every user's /run/user directory). Runs after the drop, as the caller.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as fs from "node:fs"
import { defaultApiKeyPath, defaultMapFilePath, sysconfdir } from "../buildInfo.ts"
import { libc, type Passwd } from "../native/libc.ts"
import { parseMapfile } from "../services/Mapfile.ts"
import { Unprivileged } from "../services/Privileges.ts"
import { lintMapfile } from "./check.ts"

export type Status = "ok" | "warn" | "fail" | "skip"

export interface DoctorCheck {
  readonly check: string
  readonly status: Status
  readonly detail: string
  readonly fix?: string
}

/** At least one check failed (exit 78); the checks were printed before. */
export class DoctorFailed extends Data.TaggedError("DoctorFailed")<{
  readonly failed: number
}> {}

const octal = (mode: number) => (mode & 0o7777).toString(8).padStart(4, "0")

const lstat = (path: string): fs.Stats | undefined => {
  try {
    return fs.lstatSync(path)
  } catch {
    return undefined
  }
}

const check = (name: string, status: Status, detail: string, fix?: string): DoctorCheck =>
  fix === undefined ? { check: name, status, detail } : { check: name, status, detail, fix }

/** The mount options of the filesystem holding `path`, from the kernel's mount table. */
const mountOptions = (path: string): Array<string> => {
  let best = { point: "", options: [] as Array<string> }
  for (const line of fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const fields = line.split(" ")
    const point = (fields[4] ?? "").replace(/\\040/g, " ")
    const separator = fields.indexOf("-")
    const options = [...(fields[5] ?? "").split(","), ...(fields[separator + 3] ?? "").split(",")]
    const inside = point === "/" || path === point || path.startsWith(`${point}/`)
    if (inside && point.length >= best.point.length) best = { point, options }
  }
  return best.options
}

const NO_LOGIN = new Set(["/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"])

const executableChecks = (native: ReturnType<typeof libc>): { checks: Array<DoctorCheck>; account: Passwd | undefined } => {
  if (!process.getBuiltinModule("node:sea").isSea()) {
    return { checks: [check("executable", "warn", `not the single executable (running ${process.argv[1] ?? "a script"} on ${process.execPath}); install dist/op-secret-manager`)], account: undefined }
  }
  const path = fs.realpathSync(process.execPath)
  const stat = fs.statSync(path)
  const account = native.passwdByUid(stat.uid)
  // The service account's own group carries its name; any other group is shown by number.
  const owner = `${account?.name ?? stat.uid}:${account !== undefined && account.gid === stat.gid ? account.name : stat.gid}`
  const fixModes = account === undefined || stat.uid === 0 ? `chown op:op ${path} && chmod 6755 ${path}` : `chown ${account.name}:${account.name} ${path} && chmod 6755 ${path}`
  const checks: Array<DoctorCheck> = []
  if (stat.uid === 0 && (stat.mode & 0o4000) !== 0) {
    checks.push(check("executable", "fail", `${path} is set-user-ID root; it must run as an unprivileged service account`, fixModes))
  } else if ((stat.mode & 0o7777) !== 0o6755 || stat.uid === 0) {
    checks.push(check("executable", "fail", `${path} is ${owner} mode ${octal(stat.mode)}; expected the service account and mode 6755`, fixModes))
  } else {
    checks.push(check("executable", "ok", `${path} is ${owner} mode ${octal(stat.mode)}`))
  }
  const options = mountOptions(path)
  checks.push(options.includes("nosuid")
    ? check("filesystem", "fail", `${path} is on a nosuid mount: the set-user-ID bit is ignored`, "install it on a filesystem mounted without nosuid (e.g. /usr/local/bin)")
    : check("filesystem", "ok", "the executable's filesystem honours set-user-ID"))
  if (account === undefined) {
    checks.push(check("service account", "fail", `uid ${stat.uid} owns the executable but has no passwd entry`, "op-secret-manager install"))
  } else if (account.uid === 0) {
    checks.push(check("service account", "fail", "the executable belongs to root", fixModes))
  } else {
    const loginShell = !NO_LOGIN.has(account.shell)
    checks.push(loginShell
      ? check("service account", "warn", `${account.name} (uid ${account.uid}) has a login shell ${account.shell}`, `usermod --shell /usr/sbin/nologin ${account.name}`)
      : check("service account", "ok", `${account.name} (uid ${account.uid}), no login shell`))
  }
  return { checks, account }
}

const ownedBy = (stat: fs.Stats, account: Passwd | undefined) => stat.uid === 0 || (account !== undefined && stat.uid === account.uid)

const configChecks = (asRoot: boolean, account: Passwd | undefined): Array<DoctorCheck> => {
  const svc = account?.name ?? "op"
  const checks: Array<DoctorCheck> = []
  const dir = lstat(sysconfdir)
  if (dir === undefined || !dir.isDirectory()) {
    return [check("config directory", "fail", `${sysconfdir} is missing`, "op-secret-manager install")]
  }
  checks.push(dir.uid === 0 && (dir.mode & 0o022) === 0
    ? check("config directory", "ok", `${sysconfdir} is root-owned, mode ${octal(dir.mode)}`)
    : check("config directory", "fail", `${sysconfdir} is uid ${dir.uid} mode ${octal(dir.mode)}`, `chown root:root ${sysconfdir} && chmod 755 ${sysconfdir}`))

  const api = lstat(defaultApiKeyPath)
  if (api === undefined) {
    checks.push(check("credential file", "fail", `${defaultApiKeyPath} is missing`, `install -o ${svc} -g ${svc} -m 0600 /dev/null ${defaultApiKeyPath}`))
  } else if (!api.isFile()) {
    checks.push(check("credential file", "fail", `${defaultApiKeyPath} is not a regular file`, `rm ${defaultApiKeyPath} && op-secret-manager install`))
  } else if (!ownedBy(api, account) || (api.mode & 0o077) !== 0) {
    checks.push(check("credential file", "fail", `${defaultApiKeyPath} is uid ${api.uid} mode ${octal(api.mode)}`, `chown ${svc}:${svc} ${defaultApiKeyPath} && chmod 600 ${defaultApiKeyPath}`))
  } else if (api.size === 0) {
    checks.push(check("credential file", "fail", `${defaultApiKeyPath} is empty`, `write the service account token (ops_...) into ${defaultApiKeyPath}`))
  } else if (!asRoot) {
    checks.push(check("credential file", "ok", `${defaultApiKeyPath} is private (mode ${octal(api.mode)}); run doctor as root to check its content`))
  } else {
    checks.push(credentialContent(fs.readFileSync(defaultApiKeyPath, "utf8").trim()))
  }

  const map = lstat(defaultMapFilePath)
  if (map === undefined || !map.isFile()) {
    checks.push(check("mapfile", "fail", `${defaultMapFilePath} is missing or not a regular file`, "op-secret-manager install"))
    return checks
  }
  if (!ownedBy(map, account) || (map.mode & 0o022) !== 0) {
    checks.push(check("mapfile", "fail", `${defaultMapFilePath} is uid ${map.uid} mode ${octal(map.mode)}`, `chown root:${svc} ${defaultMapFilePath} && chmod 640 ${defaultMapFilePath}`))
    return checks
  }
  if (!asRoot) {
    checks.push(check("mapfile", "ok", `${defaultMapFilePath} mode ${octal(map.mode)}; run doctor as root to lint it (or: op-secret-manager check)`))
    return checks
  }
  const bytes = fs.readFileSync(defaultMapFilePath)
  const report = lintMapfile(bytes, defaultMapFilePath, { userExists: (name) => libc().userExists(name), onlyUser: undefined })
  const errors = report.findings.filter((f) => f.severity === "error").length
  const warnings = report.findings.length - errors
  checks.push(errors > 0
    ? check("mapfile", "fail", `${errors} errors, ${warnings} warnings in ${report.entries} entries`, "op-secret-manager check")
    : warnings > 0
    ? check("mapfile", "warn", `${warnings} warnings in ${report.entries} entries`, "op-secret-manager check")
    : check("mapfile", "ok", `${report.entries} entries for ${report.users} users, no problems`))
  checks.push(...runtimeDirectoryChecks(bytes))
  return checks
}

/** A plausible token, checked locally (no network): base64 JSON naming a sign-in address. */
const credentialContent = (text: string): DoctorCheck => {
  if (text.startsWith("file:")) {
    const vault = text.slice("file:".length)
    const stat = lstat(vault)
    return stat?.isFile() && (stat.mode & 0o077) === 0
      ? check("credential file", "ok", `a local vault file: ${vault}`)
      : check("credential file", "fail", `the vault file ${vault} is missing or readable by others`, `chmod 600 ${vault}`)
  }
  if (!text.startsWith("ops_")) {
    return check("credential file", "fail", "does not hold a service account token (ops_...)", `write the token into ${defaultApiKeyPath}`)
  }
  try {
    const decoded: unknown = JSON.parse(Buffer.from(text.slice(4), "base64").toString("utf8"))
    if (typeof decoded === "object" && decoded !== null && "signInAddress" in decoded) {
      return check("credential file", "ok", "holds a well-formed service account token")
    }
  } catch {
    // Reported below.
  }
  return check("credential file", "fail", "the token is not well-formed (truncated or mistyped?)", `write the token again into ${defaultApiKeyPath}`)
}

/** Secrets go to /run/user/<uid>: a user without a session has none unless lingering is enabled. */
const runtimeDirectoryChecks = (mapfile: Uint8Array): Array<DoctorCheck> =>
  [...new Set(parseMapfile(mapfile).entries.filter((e) => !e.path.startsWith("/")).map((e) => e.user))].map((user) => {
    const account = libc().passwdByName(user)
    if (account === undefined) return check(`user ${user}`, "skip", "no such user on this host")
    if (lstat(`/run/user/${account.uid}`)?.isDirectory()) return check(`user ${user}`, "ok", `/run/user/${account.uid} exists`)
    if (lstat(`/var/lib/systemd/linger/${user}`) !== undefined) return check(`user ${user}`, "ok", "lingering is enabled")
    return check(`user ${user}`, "warn", `/run/user/${account.uid} does not exist and lingering is off`, `loginctl enable-linger ${user}`)
  })

export const runDoctor = Effect.gen(function*() {
  const { caller } = yield* Unprivileged
  return yield* Effect.try({
    try: () => {
      const native = libc()
      const { checks, account } = executableChecks(native)
      return [...checks, ...configChecks(caller.uid === 0, account)]
    },
    // A check that cannot even run (no /proc, say) is a failed installation audit.
    catch: () => new DoctorFailed({ failed: 1 })
  })
})

export const doctorLines = (checks: ReadonlyArray<DoctorCheck>): Array<string> =>
  checks.map((c) => `${c.status.padEnd(4)}  ${c.check}: ${c.detail}${c.fix === undefined ? "" : `; fix: ${c.fix}`}`)
