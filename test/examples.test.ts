/**
 * The files under examples/ are documentation that must keep working: every unit file, the cron
 * script and the mapfile are checked here, against the real CLI wherever a check can run unprivileged.
 *
 * - Unit files: a small INI parser checks their structure (sections, where ExecStartPre=/ExecStopPost=
 *   live, the keys each example depends on); when `systemd-analyze` is installed (Debian package
 *   `systemd`), `systemd-analyze verify` checks them too (see "systemd-analyze verify" below for the rule).
 * - Every op-secret-manager invocation uses only options the built CLI lists in `--help`, with a value
 *   exactly where the option takes one, and the invocations really run against the bundle with the
 *   example mapfile (the example's user replaced by the current one, absolute paths moved into a
 *   temporary directory), writing the files the units read and removing them again.
 * - The example mapfile parses with no malformed line, valid references and valid paths.
 * - The cron script passes `sh -n` and is run against a stub op-secret-manager and a stub logger.
 */
import { spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { userInfo } from "node:os"
import { join } from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { type MapEntry, parseMapfile } from "../src/services/Mapfile.ts"
import { pathProblem } from "../src/services/Paths.ts"
import { referenceProblem } from "../src/services/SecretReference.ts"
import { bundle, repoRoot, tempDir, writeConfig } from "./fixtures.ts"

const examples = join(repoRoot, "examples")
const read = (path: string) => readFileSync(join(examples, path), "utf8")
const me = userInfo().username
/** Where the README installs the executable; every example calls it by this path. */
const installedBinary = "/usr/local/bin/op-secret-manager"

let dir: ReturnType<typeof tempDir>
beforeEach(() => {
  dir = tempDir("osm-examples-")
})
afterEach(() => dir[Symbol.dispose]())

// ---------------------------------------------------------------------------------------------
// A tiny parser for systemd's INI-like unit files (and Quadlet's, which use the same syntax).

interface UnitLine {
  readonly section: string
  readonly key: string
  readonly value: string
  readonly line: number
}

/** Parses a unit file; throws on a line that is neither a comment, a section header nor key=value. */
const parseUnit = (text: string): ReadonlyArray<UnitLine> => {
  const result: Array<UnitLine> = []
  let section: string | undefined
  const lines = text.split("\n")
  for (let i = 0; i < lines.length; i++) {
    const number = i + 1
    let raw = lines[i] ?? ""
    // A trailing backslash continues a value on the next line.
    while (raw.endsWith("\\") && i + 1 < lines.length) raw = `${raw.slice(0, -1)} ${lines[++i] ?? ""}`
    const text = raw.trim()
    if (text.length === 0 || text.startsWith("#") || text.startsWith(";")) continue
    const header = /^\[([A-Za-z]+)\]$/.exec(text)
    if (header) {
      section = header[1]
      continue
    }
    const assignment = /^([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)$/.exec(text)
    if (!assignment) throw new Error(`line ${number}: not a comment, section or key=value: ${text}`)
    if (section === undefined) throw new Error(`line ${number}: key outside any section`)
    result.push({ section, key: assignment[1] ?? "", value: assignment[2] ?? "", line: number })
  }
  return result
}

const sectionsOf = (unit: ReadonlyArray<UnitLine>) => [...new Set(unit.map((l) => l.section))]
const values = (unit: ReadonlyArray<UnitLine>, section: string, key: string) =>
  unit.filter((l) => l.section === section && l.key === key).map((l) => l.value)
const value = (unit: ReadonlyArray<UnitLine>, section: string, key: string) => {
  const found = values(unit, section, key)
  expect(found, `${section}.${key}`).toHaveLength(1)
  return found[0] ?? ""
}

/** An Exec*= value as argv: systemd's prefixes (-, @, :, +, !) dropped; the examples use no quoting. */
const execArgv = (line: string): Array<string> => {
  expect(line, "example command lines use no quoting").not.toMatch(/["'\\]/)
  return line.replace(/^[-@:+!]+/, "").trim().split(/\s+/)
}

const quadlet = parseUnit(read("quadlet/myapp.container"))
const secretsUnit = parseUnit(read("systemd/app-secrets.service"))
const appUnit = parseUnit(read("systemd/app.service"))
const exampleMapfile = read("mapfile")

/** Every line of every unit that runs op-secret-manager, with where it comes from. */
const unitInvocations = ([
  ["quadlet/myapp.container", quadlet],
  ["systemd/app-secrets.service", secretsUnit],
  ["systemd/app.service", appUnit]
] as const).flatMap(([file, unit]) =>
  unit.filter((l) => l.key.startsWith("Exec") && l.value.includes("op-secret-manager"))
    .map((l) => ({ where: `${file}:${l.line} ${l.key}=`, argv: execArgv(l.value) }))
)

// ---------------------------------------------------------------------------------------------
// The real CLI's options, from the built bundle's --help.

interface CliOption {
  readonly names: ReadonlyArray<string>
  readonly takesValue: boolean
}

const cliOptions = (): ReadonlyArray<CliOption> => {
  const help = spawnSync(process.execPath, [bundle, "--help"], { encoding: "utf8", env: { PATH: process.env.PATH ?? "" } })
  expect(help.status, help.stderr).toBe(0)
  const plain = help.stdout.replace(/\u001b\[[0-9;]*m/g, "")
  const usage = plain.split("\n").find((line) => line.startsWith("$ op-secret-manager "))
  expect(usage, "the USAGE line of --help").toBeDefined()
  return [...(usage ?? "").matchAll(/\[\(?([^\]]+?)\)?\]/g)].map(([, content = ""]) =>
    content.includes(", ")
      ? { names: content.split(", "), takesValue: false }
      : { names: [content.split(" ")[0] ?? ""], takesValue: content.includes(" ") }
  )
}

/** Problems of one invocation's arguments (after the program name), given the CLI's options. */
const argumentProblems = (args: ReadonlyArray<string>, options: ReadonlyArray<CliOption>): Array<string> => {
  const problems: Array<string> = []
  const byName = new Map(options.flatMap((option) => option.names.map((name) => [name, option] as const)))
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? ""
    if (i === 0 && (arg === "fetch" || arg === "cleanup")) continue
    const [name = "", inline] = arg.split("=", 2)
    const option = byName.get(name)
    if (option === undefined) {
      problems.push(`${arg}: not an option of op-secret-manager`)
    } else if (option.takesValue && inline === undefined) {
      const next = args[i + 1]
      if (next === undefined || next.startsWith("-")) problems.push(`${name} needs a value`)
      i++
    } else if (!option.takesValue && inline !== undefined) {
      problems.push(`${name} takes no value`)
    }
  }
  return problems
}

// ---------------------------------------------------------------------------------------------
// Running the example invocations for real against the bundle.

/** The vault for the example mapfile: every reference it names, with a recognisable value. */
const exampleVault = Object.fromEntries(parseMapfile(exampleMapfile).entries.map((e) => [e.reference, `value of ${e.reference}`]))

/** The example mapfile with one example user's lines given to the current user (others untouched). */
const mapfileFor = (user: string, rewrite: (line: string) => string = (line) => line): string =>
  exampleMapfile.split("\n").map((line) => (line.startsWith(`${user} `) ? rewrite(line.replace(`${user} `, `${me} `)) : line)).join("\n")

const runBundle = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) => {
  const result = spawnSync(process.execPath, [bundle, ...args], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "", ...env },
    cwd: dir.path,
    timeout: 20_000
  })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

const execOf = (unit: ReadonlyArray<UnitLine>, key: string) => {
  const argv = execArgv(value(unit, "Service", key))
  expect(argv[0], `${key}= runs the installed executable`).toBe(installedBinary)
  return argv.slice(1)
}

// =============================================================================================

describe("examples/mapfile", () => {
  const mapfile = parseMapfile(exampleMapfile)

  it("parses with no malformed line, and every reference and path is valid", () => {
    expect(mapfile.malformed).toEqual([])
    expect(mapfile.entries.length).toBeGreaterThanOrEqual(6)
    for (const entry of mapfile.entries) {
      expect(referenceProblem(entry.reference), `line ${entry.line}: ${entry.reference}`).toBeUndefined()
      expect(pathProblem(entry.path), `line ${entry.line}: ${entry.path}`).toBeUndefined()
    }
  })

  it("has lines for exactly the users of the examples, each writing distinct files", () => {
    expect(new Set(mapfile.entries.map((e) => e.user))).toEqual(new Set(["deploy", "app", "reports"]))
    for (const user of ["deploy", "app", "reports"]) {
      const paths = mapfile.entries.filter((e) => e.user === user).map((e) => e.path)
      expect(new Set(paths).size, `${user}'s paths are distinct`).toBe(paths.length)
    }
    // The system service's user has no /run/user/<uid>: its paths are absolute, under its RuntimeDirectory=.
    const runtimeDir = `/run/${value(secretsUnit, "Service", "RuntimeDirectory")}/`
    for (const entry of mapfile.entries.filter((e) => e.user === "app")) expect(entry.path.startsWith(runtimeDir)).toBe(true)
    for (const entry of mapfile.entries.filter((e) => e.user !== "app")) expect(entry.path.startsWith("/")).toBe(false)
  })

  it("matches the mapfile lines quoted in the comments of app-secrets.service", () => {
    const quoted = read("systemd/app-secrets.service").split("\n")
      .filter((line) => /^#\s+app\s+/.test(line))
      .map((line) => line.replace(/^#\s+/, ""))
      .join("\n")
    const strip = (entries: ReadonlyArray<MapEntry>) => entries.map(({ line: _line, ...rest }) => rest)
    expect(strip(parseMapfile(quoted).entries)).toEqual(strip(mapfile.entries.filter((e) => e.user === "app")))
    expect(parseMapfile(quoted).entries.length).toBeGreaterThan(0)
  })
})

describe("unit files (structure)", () => {
  it("the parser reads every line of every example unit", () => {
    // parseUnit throws on a line it cannot read; the module-level parses already ran. Make sure it can fail.
    expect(() => parseUnit("[Service]\nnot a key value line\n")).toThrow(/line 2/)
    expect(() => parseUnit("Key=outside\n")).toThrow(/outside any section/)
    expect(parseUnit("[A]\nKey=a \\\n  b\n")).toEqual([{ section: "A", key: "Key", value: "a    b", line: 2 }])
  })

  it("quadlet/myapp.container: [Unit], [Container], [Service], [Install]; fetch and cleanup only in [Service]", () => {
    expect(sectionsOf(quadlet)).toEqual(["Unit", "Container", "Service", "Install"])
    // Quadlet rejects ExecStartPre=/ExecStopPost= (and every other unknown key) under [Container].
    const containerKeys = new Set(quadlet.filter((l) => l.section === "Container").map((l) => l.key))
    expect(containerKeys.has("ExecStartPre")).toBe(false)
    expect(containerKeys.has("ExecStopPost")).toBe(false)
    const knownQuadletKeys = new Set([
      "Image", "ContainerName", "Volume", "Environment", "EnvironmentFile", "Exec", "PublishPort", "Network", "User",
      "Group", "UserNS", "Secret", "ReadOnly", "NoNewPrivileges", "DropCapability", "AddCapability", "Label",
      "Annotation", "HealthCmd", "AutoUpdate", "PodmanArgs", "Timezone", "WorkingDir", "Mount", "Tmpfs", "Pod", "Notify"
    ])
    for (const key of containerKeys) expect(knownQuadletKeys.has(key), `[Container] ${key}=`).toBe(true)

    const fetch = execOf(quadlet, "ExecStartPre")
    const cleanup = execOf(quadlet, "ExecStopPost")
    for (const args of [fetch, cleanup]) {
      expect(args.join(" ")).toContain("--tags myapp")
      expect(args).toContain("--serialize")
    }
    expect(fetch).not.toContain("--cleanup")
    expect(cleanup).toContain("--cleanup")
    // The unit must not forbid the set-user-ID bit its ExecStartPre= needs.
    expect(values(quadlet, "Service", "NoNewPrivileges")).toEqual([])

    // %t/secrets/... is bind-mounted read-only at /run/secrets.
    const volume = value(quadlet, "Container", "Volume").split(":")
    expect(volume[0]).toMatch(/^%t\/secrets(\/|$)/)
    expect(volume[1]).toBe("/run/secrets")
    expect((volume[2] ?? "").split(",")).toContain("ro")
    expect(value(quadlet, "Install", "WantedBy")).toBe("default.target")
  })

  it("systemd/app-secrets.service: a oneshot that stays active, fetches on start and cleans up on stop, as app", () => {
    expect(sectionsOf(secretsUnit)).toEqual(["Unit", "Service"])
    expect(value(secretsUnit, "Service", "Type")).toBe("oneshot")
    expect(value(secretsUnit, "Service", "RemainAfterExit")).toBe("yes")
    expect(value(secretsUnit, "Service", "User")).toBe("app")
    expect(value(secretsUnit, "Service", "RuntimeDirectory")).toBe("app-secrets")
    expect(value(secretsUnit, "Service", "RuntimeDirectoryMode")).toBe("0700")
    expect(execOf(secretsUnit, "ExecStart")).not.toContain("--cleanup")
    expect(execOf(secretsUnit, "ExecStop")).toContain("--cleanup")
    expect(values(secretsUnit, "Service", "NoNewPrivileges")).toEqual([])
  })

  it("systemd/app.service: requires and follows app-secrets.service, runs as app, reads /run/app-secrets", () => {
    expect(sectionsOf(appUnit)).toEqual(["Unit", "Service", "Install"])
    expect(values(appUnit, "Unit", "Requires").join(" ").split(/\s+/)).toContain("app-secrets.service")
    expect(values(appUnit, "Unit", "After").join(" ").split(/\s+/)).toContain("app-secrets.service")
    expect(value(appUnit, "Service", "User")).toBe("app")
    expect(value(appUnit, "Service", "ExecStart")).toContain("/run/app-secrets/")
    expect(unitInvocations.filter((i) => i.where.startsWith("systemd/app.service"))).toEqual([])
  })
})

describe("op-secret-manager invocations in the examples", () => {
  let cached: ReadonlyArray<CliOption> | undefined
  const getOptions = () => (cached ??= cliOptions())

  it("--help lists the options the examples are checked against", () => {
    const options = getOptions()
    const names = options.flatMap((o) => o.names)
    for (const name of ["--tags", "--untagged", "--serialize", "--lock-timeout", "-v", "--verbose", "--json",
      "--api-key-path", "--map-file-path", "--secrets-dir", "--cleanup"]) expect(names).toContain(name)
    expect(options.find((o) => o.names.includes("--tags"))?.takesValue).toBe(true)
    expect(options.find((o) => o.names.includes("--serialize"))?.takesValue).toBe(false)
    // The checker rejects what it should.
    expect(argumentProblems(["--tags", "a", "--tag"], options)).toEqual(["--tag: not an option of op-secret-manager"])
    expect(argumentProblems(["--tags"], options)).toEqual(["--tags needs a value"])
    expect(argumentProblems(["--json=yes"], options)).toEqual(["--json takes no value"])
  })

  it("every unit's command line uses only real options, with values where they take one", () => {
    const options = getOptions()
    expect(unitInvocations.length).toBe(4)
    for (const { where, argv } of unitInvocations) {
      expect(argv[0], where).toBe(installedBinary)
      expect(argumentProblems(argv.slice(1), options), where).toEqual([])
    }
  })

  it("the cron script's fixed options plus each crontab line's options are real options", () => {
    const options = getOptions()
    const script = read("cron/refresh-secrets.sh").split("\n").filter((l) => !l.trimStart().startsWith("#"))
    const calls = script.filter((l) => l.includes("\"$osm\""))
    expect(calls).toHaveLength(1)
    const fixed = (calls[0] ?? "").split("\"$osm\"")[1]?.split(/\s+/).filter((t) => t.startsWith("-")) ?? []
    expect(fixed).toEqual(["--serialize", "--json"])
    const jobs = cronJobs()
    expect(jobs.length).toBeGreaterThan(0)
    for (const job of jobs) expect(argumentProblems([...fixed, ...job.args], options), job.line).toEqual([])
  })
})

/** The crontab's jobs: five time fields (or @reboot etc.), the script, its arguments. */
const cronJobs = () =>
  read("cron/crontab").split("\n")
    .filter((line) => line.trim().length > 0 && !line.trimStart().startsWith("#"))
    .map((line) => {
      const fields = line.trim().split(/\s+/)
      const command = fields[0]?.startsWith("@") ? fields.slice(1) : fields.slice(5)
      return { line, schedule: fields.slice(0, fields.length - command.length), command: command[0] ?? "", args: command.slice(1) }
    })

describe("the example invocations run against the real CLI and the example mapfile", () => {
  it("quadlet: ExecStartPre= writes what the container reads under /run/secrets; ExecStopPost= removes it", () => {
    const config = writeConfig(dir.path, mapfileFor("deploy"), exampleVault)
    const runtime = join(dir.path, "run-user") // stands for %t, /run/user/<uid>: the user manager's, always there
    mkdirSync(runtime, { mode: 0o700 })
    const overrides = ["--map-file-path", config.mapfile, "--api-key-path", config.api, "--secrets-dir", join(runtime, "secrets")]

    const fetch = runBundle([...execOf(quadlet, "ExecStartPre"), ...overrides])
    expect(fetch.status, fetch.stderr).toBe(0)
    const [source = "", target = ""] = value(quadlet, "Container", "Volume").split(":")
    const mounted = source.replace("%t", runtime)
    // Every /run/secrets/... file the container is told about exists in the mounted directory.
    const containerFiles = values(quadlet, "Container", "Environment").map((e) => e.split("=")[1] ?? "")
      .filter((path) => path.startsWith(`${target}/`))
    expect(containerFiles.length).toBeGreaterThan(0)
    for (const path of containerFiles) {
      const host = join(mounted, path.slice(target.length))
      expect(readFileSync(host, "utf8")).toMatch(/^value of op:\/\//)
      expect(statSync(host).mode & 0o777).toBe(0o600)
    }

    const cleanup = runBundle([...execOf(quadlet, "ExecStopPost"), ...overrides])
    expect(cleanup.status, cleanup.stderr).toBe(0)
    for (const path of containerFiles) expect(existsSync(join(mounted, path.slice(target.length)))).toBe(false)
  })

  it("system service: ExecStart= writes the files app.service reads (absolute paths); ExecStop= removes them", () => {
    const runDir = join(dir.path, "run") // stands for /run
    const config = writeConfig(dir.path, mapfileFor("app", (line) => line.replaceAll("/run/", `${runDir}/`)), exampleVault)
    // systemd creates the RuntimeDirectory= before ExecStart=.
    mkdirSync(join(runDir, value(secretsUnit, "Service", "RuntimeDirectory")), { recursive: true, mode: 0o700 })
    const overrides = ["--map-file-path", config.mapfile, "--api-key-path", config.api]

    const fetch = runBundle([...execOf(secretsUnit, "ExecStart"), ...overrides])
    expect(fetch.status, fetch.stderr).toBe(0)
    const appReads = [...value(appUnit, "Service", "ExecStart").matchAll(/\/run\/app-secrets\/\S+/g)].map(([path]) => path)
    const environment = values(appUnit, "Service", "Environment").map((e) => e.split("=")[1] ?? "")
    expect(appReads.length).toBeGreaterThan(0)
    for (const path of new Set([...appReads, ...environment])) {
      expect(readFileSync(path.replace("/run/", `${runDir}/`), "utf8")).toMatch(/^value of op:\/\//)
    }

    const cleanup = runBundle([...execOf(secretsUnit, "ExecStop"), ...overrides])
    expect(cleanup.status, cleanup.stderr).toBe(0)
    for (const path of appReads) expect(existsSync(path.replace("/run/", `${runDir}/`))).toBe(false)
  })

  it("cron: the crontab's command line, through the script, fetches the reports user's secrets", () => {
    const config = writeConfig(dir.path, mapfileFor("reports"), exampleVault)
    const wrapper = join(dir.path, "op-secret-manager")
    writeFileSync(wrapper, `#!/bin/sh\nexec '${process.execPath}' '${bundle}' "$@"\n`, { mode: 0o755 })
    const job = cronJobs()[0]!
    const result = runScript([...job.args, "--secrets-dir", config.secrets], {
      OP_SECRET_MANAGER: wrapper,
      OP_MAP_FILE_PATH: config.mapfile,
      OP_API_KEY_PATH: config.api,
      LOGGER: ""
    })
    expect(result.status, result.stderr).toBe(0)
    const reports = parseMapfile(exampleMapfile).entries.filter((e) => e.user === "reports")
    expect(result.stderr.trim()).toBe(`op-secret-manager: fetch ok: ${reports.length} written, 0 unchanged`)
    for (const entry of reports) expect(readFileSync(join(config.secrets, entry.path), "utf8")).toBe(`value of ${entry.reference}`)
    const again = runScript([...job.args, "--secrets-dir", config.secrets], {
      OP_SECRET_MANAGER: wrapper,
      OP_MAP_FILE_PATH: config.mapfile,
      OP_API_KEY_PATH: config.api,
      LOGGER: ""
    })
    expect(again.stderr.trim()).toBe(`op-secret-manager: fetch ok: 0 written, ${reports.length} unchanged`)
  })
})

// ---------------------------------------------------------------------------------------------
// The cron script against stubs.

const script = join(examples, "cron/refresh-secrets.sh")

const runScript = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv, path = process.env.PATH ?? "") => {
  const result = spawnSync("sh", [script, ...args], {
    encoding: "utf8",
    env: { PATH: path, RETRY_DELAY: "0", ...env },
    cwd: dir.path,
    timeout: 20_000
  })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

/**
 * A stub op-secret-manager in <dir>/bin: the Nth call exits with the Nth code of STUB_CODES, prints a
 * JSON report like the real one (two files on success, an error naming line 3 otherwise) and records
 * its arguments; a stub logger records its arguments.
 */
const stubs = () => {
  const bin = join(dir.path, "bin")
  mkdirSync(bin)
  const calls = join(dir.path, "calls")
  const logged = join(dir.path, "logged")
  writeFileSync(join(bin, "op-secret-manager"), [
    "#!/bin/sh",
    `printf '%s\\n' "$*" >> '${calls}'`,
    `n=$(($(wc -l < '${calls}')))`,
    `code=$(printf '%s\\n' $STUB_CODES | sed -n "\${n}p")`,
    "if [ \"$code\" = 0 ]; then",
    `  echo '{"ok":true,"command":"fetch","user":"u","files":[{"path":"/a","reference":"op://V/a/x","line":1,"status":"written"},{"path":"/b","reference":"op://V/b/x","line":2,"status":"unchanged"}],"warnings":[]}'`,
    "else",
    `  echo '{"ok":false,"command":"fetch","error":{"code":'"$code"',"message":"line 3: a \\"bad\\" field"},"files":[]}'`,
    "  echo \"op-secret-manager: error: line 3: a bad field\" >&2",
    "fi",
    "exit \"$code\""
  ].join("\n") + "\n", { mode: 0o755 })
  writeFileSync(join(bin, "logger"), `#!/bin/sh\nprintf '%s|' "$@" >> '${logged}'\necho >> '${logged}'\n`, { mode: 0o755 })
  const lines = (path: string) => (existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((l) => l.length > 0) : [])
  return {
    bin,
    path: `${bin}:${process.env.PATH ?? ""}`,
    calls: () => lines(calls),
    logged: () => lines(logged)
  }
}

describe("examples/cron", () => {
  it("refresh-secrets.sh is executable and passes sh -n", () => {
    expect(statSync(script).mode & 0o111).not.toBe(0)
    const check = spawnSync("sh", ["-n", script], { encoding: "utf8" })
    expect(check.status, check.stderr).toBe(0)
    expect(readFileSync(script, "utf8").split("\n")[0]).toBe("#!/bin/sh")
  })

  it("crontab: every job runs the script with a valid schedule", () => {
    for (const job of cronJobs()) {
      expect(job.command.endsWith("/refresh-secrets.sh"), job.line).toBe(true)
      const [schedule = "", ...rest] = job.schedule
      if (schedule.startsWith("@")) expect(["@reboot", "@hourly", "@daily", "@weekly", "@monthly", "@yearly"]).toContain(schedule)
      else expect([schedule, ...rest], job.line).toHaveLength(5)
      for (const field of job.schedule.filter((f) => !f.startsWith("@"))) expect(field).toMatch(/^[0-9*/,-]+$/)
    }
  })

  it("exit 0: logs one ok line with the counts through logger, prints nothing, exits 0", () => {
    const stub = stubs()
    const result = runScript(["--tags", "reports"], { STUB_CODES: "0" }, stub.path)
    expect(result.status).toBe(0)
    expect(result.stdout).toBe("")
    expect(result.stderr).toBe("")
    expect(stub.calls()).toEqual(["--serialize --json --tags reports"])
    expect(stub.logged()).toEqual(["-t|op-secret-manager|-p|user.info|--|fetch ok: 1 written, 1 unchanged|"])
  })

  it("exit 75 then 0: logs the temporary failure, retries exactly once, logs ok, exits 0", () => {
    const stub = stubs()
    const result = runScript(["--tags", "reports"], { STUB_CODES: "75 0" }, stub.path)
    expect(result.status).toBe(0)
    expect(stub.calls()).toEqual(["--serialize --json --tags reports", "--serialize --json --tags reports"])
    expect(stub.logged()).toEqual([
      "-t|op-secret-manager|-p|user.warning|--|fetch: exit 75 (temporary failure): line 3: a 'bad' field; retrying in 0s|",
      "-t|op-secret-manager|-p|user.info|--|fetch ok after a retry: 1 written, 1 unchanged|"
    ])
  })

  it("exit 75 twice: gives up after one retry and exits 75", () => {
    const stub = stubs()
    const result = runScript([], { STUB_CODES: "75 75 0" }, stub.path)
    expect(result.status).toBe(75)
    expect(stub.calls()).toHaveLength(2)
    expect(stub.logged()[1]).toContain("user.err|--|fetch failed after a retry: exit 75 (temporary failure)")
  })

  it("exit 65: logs the failure with its meaning and message, does not retry, exits 65", () => {
    const stub = stubs()
    const result = runScript(["--tags", "reports"], { STUB_CODES: "65 0" }, stub.path)
    expect(result.status).toBe(65)
    expect(stub.calls()).toHaveLength(1)
    expect(stub.logged()).toEqual(["-t|op-secret-manager|-p|user.err|--|fetch failed: exit 65 (mapfile error): line 3: a 'bad' field|"])
    // The tool's own error line still reaches stderr (cron mails it).
    expect(result.stderr).toBe("op-secret-manager: error: line 3: a bad field\n")
  })

  it("names every documented exit code", () => {
    const text = readFileSync(script, "utf8")
    for (const code of [0, 64, 65, 66, 69, 73, 75, 77, 78]) expect(text).toMatch(new RegExp(`^\\s+${code}\\) echo "`, "m"))
  })

  it("logs to stderr when LOGGER is empty, missing or failing", () => {
    const stub = stubs()
    const failing = join(stub.bin, "failing-logger")
    writeFileSync(failing, "#!/bin/sh\nexit 1\n", { mode: 0o755 })
    for (const logger of ["", join(dir.path, "no-such-logger"), failing]) {
      const result = runScript([], { STUB_CODES: "0 0 0", LOGGER: logger }, stub.path)
      expect(result.status, `LOGGER=${logger}`).toBe(0)
      expect(result.stderr, `LOGGER=${logger}`).toBe("op-secret-manager: fetch ok: 1 written, 1 unchanged\n")
      writeFileSync(join(dir.path, "calls"), "")
    }
    expect(stub.logged()).toEqual([])
  })

  it("OP_SECRET_MANAGER overrides the command; a missing one is logged as exit 127", () => {
    const stub = stubs()
    const moved = join(dir.path, "elsewhere")
    writeFileSync(moved, readFileSync(join(stub.bin, "op-secret-manager")), { mode: 0o755 })
    const ok = runScript([], { STUB_CODES: "0", OP_SECRET_MANAGER: moved, LOGGER: "" }, process.env.PATH)
    expect(ok.status).toBe(0)
    expect(stub.calls()).toEqual(["--serialize --json"])
    const missing = runScript([], { OP_SECRET_MANAGER: join(dir.path, "missing"), LOGGER: "" }, process.env.PATH)
    expect(missing.status).toBe(127)
    expect(missing.stderr).toContain(`op-secret-manager: fetch failed: exit 127 (cannot run ${join(dir.path, "missing")})`)
  })
})

// ---------------------------------------------------------------------------------------------
// systemd-analyze verify.
//
// The rule: on a copy of each unit whose executables are replaced by stand-ins that exist (verify
// reports "Command ... is not executable" for a binary that is not installed, which says nothing
// about the unit), `systemd-analyze verify` must exit 0 and print nothing. It needs no running
// systemd. It reports unknown keys, bad values and missing executables, all as lines naming the unit
// (an unknown key only as a line: the exit status stays 0), so any output at all fails the test. It
// does not check that User= exists. The Quadlet file is checked as the service Quadlet would make of
// it: its [Container] section dropped (Podman's generator is not installed here; Debian 12's Podman
// 4.3 has none) and an ExecStart= stand-in added, verified as a user unit. A broken copy proves the
// rule can fail.

const hasAnalyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" }).status === 0

const verify = (files: Record<string, string>, user: boolean) => {
  const units = join(dir.path, "units")
  const bin = join(dir.path, "stand-ins")
  const runtime = join(dir.path, "xdg-runtime")
  mkdirSync(units, { recursive: true })
  mkdirSync(bin, { recursive: true })
  mkdirSync(runtime, { recursive: true, mode: 0o700 })
  const names: Array<string> = []
  for (const [name, text] of Object.entries(files)) {
    // Every absolute executable of an Exec*= line becomes an existing stand-in with the same name.
    const rewritten = text.replace(/^(Exec[A-Za-z]*=[-@:+!]*)(\/\S+)/gm, (_all, key: string, program: string) => {
      const standIn = join(bin, program.split("/").pop() ?? "x")
      writeFileSync(standIn, "#!/bin/sh\nexit 0\n", { mode: 0o755 })
      return `${key}${standIn}`
    })
    writeFileSync(join(units, name), rewritten)
    names.push(join(units, name))
  }
  const result = spawnSync("systemd-analyze", [...(user ? ["--user"] : []), "verify", ...names], {
    encoding: "utf8",
    cwd: units,
    env: { ...process.env, XDG_RUNTIME_DIR: runtime, SYSTEMD_LOG_COLOR: "0", SYSTEMD_PAGER: "" },
    timeout: 60_000
  })
  return { status: result.status, output: `${result.stdout}${result.stderr}`.trim() }
}

/** The service Quadlet generates from a .container file, as far as systemd-analyze can judge it. */
const quadletAsService = (text: string) => {
  const kept: Array<string> = []
  let inContainer = false
  for (const line of text.split("\n")) {
    if (/^\[.*\]$/.test(line.trim())) inContainer = line.trim() === "[Container]"
    if (!inContainer) kept.push(line)
    if (line.trim() === "[Service]") kept.push("ExecStart=/usr/bin/podman-stand-in run myapp")
  }
  return kept.join("\n")
}

describe.skipIf(!hasAnalyze)("systemd-analyze verify (skipped when systemd-analyze is not installed)", () => {
  const systemUnits = { "app-secrets.service": read("systemd/app-secrets.service"), "app.service": read("systemd/app.service") }

  it("systemd/app-secrets.service and app.service verify with no finding", () => {
    expect(verify(systemUnits, false)).toEqual({ status: 0, output: "" })
  })

  it("quadlet/myapp.container, as the user service Quadlet makes of it, verifies with no finding", () => {
    const service = quadletAsService(read("quadlet/myapp.container"))
    expect(service.split("\n").map((l) => l.trim())).not.toContain("[Container]")
    expect(service).toContain("ExecStartPre=")
    expect(verify({ "myapp.service": service }, true)).toEqual({ status: 0, output: "" })
  })

  it("the rule catches a broken unit (unknown key, bad value, missing executable)", () => {
    const broken = systemUnits["app-secrets.service"].replace("[Service]\n", "[Service]\nFrobnicate=yes\nRemainAfterExit=perhaps\n")
    const result = verify({ "app-secrets.service": broken, "app.service": systemUnits["app.service"] }, false)
    expect(result.output).toMatch(/Unknown key.*Frobnicate/)
    expect(result.output).toMatch(/Failed to parse boolean value.*perhaps/)
    writeFileSync(join(dir.path, "units", "missing.service"), "[Service]\nExecStart=/nonexistent/binary\n")
    const missing = spawnSync("systemd-analyze", ["verify", join(dir.path, "units", "missing.service")], { encoding: "utf8" })
    expect(missing.status).not.toBe(0)
    expect(`${missing.stdout}${missing.stderr}`).toMatch(/not executable/)
  })
})
