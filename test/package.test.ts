/**
 * The Debian package (npm run package:deb, scripts/package-deb.mjs): built once into a temporary
 * directory, then inspected as an archive (control fields, conffiles, paths, owners, modes), its
 * man page held against what --help and README.md promise, and (as root) installed on this machine
 * with dpkg, exercised and purged. The machine is left as it was: the package purged, and the
 * service account `op` removed only if this suite created it.
 */
import { spawnSync } from "node:child_process"
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { gunzipSync } from "node:zlib"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { bundle, repoRoot } from "./fixtures.ts"

const PACKAGE = "op-secret-manager"
const BIN = "/usr/bin/op-secret-manager"
const ETC = "/etc/op-secret-manager"
const SVC = "op"
const isRoot = process.getuid?.() === 0
const SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
const DPKG_TIMEOUT = 180_000

const { packageDeb, debianVersion } = (await import(pathToFileURL(join(repoRoot, "scripts/package-deb.mjs")).href)) as {
  packageDeb: (options: { outdir: string }) => Promise<string>
  debianVersion: (version: string) => string
}

const packageVersion = (JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { version: string }).version
const version = debianVersion(packageVersion)

interface Run {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

const run = (command: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}, timeout = 60_000): Run => {
  const result = spawnSync(command, args, {
    encoding: "utf8",
    env: { PATH: SYSTEM_PATH, LC_ALL: "C.UTF-8", DEBIAN_FRONTEND: "noninteractive", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    timeout,
    maxBuffer: 64 * 1024 * 1024
  })
  return { status: result.status, stdout: result.stdout ?? "", stderr: result.stderr ?? "" }
}

/** Runs a command that must succeed and returns its stdout (its output is in the error otherwise). */
const ok = (command: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}, timeout?: number): string => {
  const result = run(command, args, env, timeout)
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} exited ${result.status}:\n${result.stdout}${result.stderr}`)
  return result.stdout
}

let work: string
let deb: string
/** The archive's file system tree and control files, unpacked without installing. */
let tree: string
let control: string

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "osm-package-test-"))
  deb = await packageDeb({ outdir: join(work, "out") })
  tree = join(work, "tree")
  control = join(work, "DEBIAN")
  ok("dpkg-deb", ["-x", deb, tree])
  ok("dpkg-deb", ["-e", deb, control])
}, 600_000)

afterAll(() => {
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

describe("the package archive", () => {
  it("is named after the version in package.json", () => {
    expect(deb.endsWith(`/${PACKAGE}_${version}_amd64.deb`)).toBe(true)
  })

  it("has the control fields of an amd64 admin package that depends on libc6", () => {
    const fields = new Map<string, string>()
    for (const match of ok("dpkg-deb", ["-f", deb]).matchAll(/^([A-Za-z-]+): (.*(?:\n .*)*)/gm)) fields.set(match[1] ?? "", match[2] ?? "")
    expect(fields.get("Package")).toBe(PACKAGE)
    expect(fields.get("Version")).toBe(version)
    expect(fields.get("Architecture")).toBe("amd64")
    expect(fields.get("Maintainer")).toMatch(/^[^<>]+ <[^<>@\s]+@[^<>@\s]+>$/)
    expect(fields.get("Depends")?.split(/,\s*/).map((d) => d.split(" ")[0])).toContain("libc6")
    expect(fields.get("Section")).toBe("admin")
    expect(fields.get("Priority")).toBe("optional")
    expect(fields.get("Description")).toMatch(/^\S.*\n \S/)
    // Installed-Size is in KiB and mostly the executable.
    const executableKiB = lstatSync(join(tree, BIN)).size / 1024
    expect(Number(fields.get("Installed-Size"))).toBeGreaterThan(executableKiB)
    expect(Number(fields.get("Installed-Size"))).toBeLessThan(executableKiB + 1024)
  })

  it("lists the mapfile as its only conffile and ships postinst and postrm", () => {
    const info = ok("dpkg-deb", ["-I", deb])
    expect(info).toMatch(/^\s+\d+ bytes,\s+\d+ lines\s+conffiles\s*$/m)
    expect(info).toMatch(/^\s+\d+ bytes,\s+\d+ lines\s+\*\s+postinst\s+#!\/bin\/sh$/m)
    expect(info).toMatch(/^\s+\d+ bytes,\s+\d+ lines\s+\*\s+postrm\s+#!\/bin\/sh$/m)
    expect(ok("dpkg-deb", ["-I", deb, "conffiles"])).toBe(`${ETC}/mapfile\n`)
  })

  it("holds exactly the expected paths, all root/root, and no set-user-ID bit (dpkg-statoverride adds it)", () => {
    const entries = ok("dpkg-deb", ["-c", deb]).trim().split("\n").map((line) => {
      const [mode = "", owner = "", , , , path = ""] = line.split(/\s+/)
      return { mode, owner, path }
    })
    const dirs = ["./", "./etc/", `.${ETC}/`, "./usr/", "./usr/bin/", "./usr/share/", "./usr/share/doc/", `./usr/share/doc/${PACKAGE}/`, "./usr/share/man/", "./usr/share/man/man1/"]
    expect(Object.fromEntries(entries.map(({ path, mode }) => [path, mode]))).toEqual({
      ...Object.fromEntries(dirs.map((dir) => [dir, "drwxr-xr-x"])),
      [`.${BIN}`]: "-rwxr-xr-x",
      [`.${ETC}/mapfile`]: "-rw-r--r--",
      [`./usr/share/doc/${PACKAGE}/copyright`]: "-rw-r--r--",
      [`./usr/share/doc/${PACKAGE}/changelog.Debian.gz`]: "-rw-r--r--",
      [`./usr/share/man/man1/${PACKAGE}.1.gz`]: "-rw-r--r--"
    })
    for (const { owner } of entries) expect(owner).toBe("root/root")
  })

  it("has md5sums for every file except the conffile, and they match", () => {
    const sums = readFileSync(join(control, "md5sums"), "utf8").trim().split("\n").map((line) => line.split(/\s+/))
    expect(sums.map(([, path]) => path).sort()).toEqual([
      `usr/bin/${PACKAGE}`,
      `usr/share/doc/${PACKAGE}/changelog.Debian.gz`,
      `usr/share/doc/${PACKAGE}/copyright`,
      `usr/share/man/man1/${PACKAGE}.1.gz`
    ])
    const check = spawnSync("md5sum", ["--check", "--quiet", join(control, "md5sums")], { cwd: tree, encoding: "utf8" })
    expect(check.status, check.stdout + check.stderr).toBe(0)
  })

  it("ships the single executable built for /etc/op-secret-manager", () => {
    const executable = join(tree, BIN)
    expect(readFileSync(executable).subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))
    expect(ok(executable, ["--version"])).toBe(`${PACKAGE} ${packageVersion}\n`)
    expect(ok(executable, ["--help"], { NO_COLOR: "1" })).toContain(`default ${ETC}/api`)
  })

  it("ships a mapfile example in which every line is a comment (a fresh install grants nothing)", () => {
    const lines = readFileSync(join(tree, ETC, "mapfile"), "utf8").split("\n")
    expect(lines.filter((line) => line.trim() !== "" && !line.trimStart().startsWith("#"))).toEqual([])
    expect(lines.filter((line) => /^# \S+\s+"?op:\/\//.test(line)).length).toBeGreaterThan(0)
  })

  it("ships a machine-readable copyright file and a Debian changelog, compressed with gzip -9n", () => {
    const copyright = readFileSync(join(tree, `usr/share/doc/${PACKAGE}/copyright`), "utf8")
    expect(copyright.split("\n")[0]).toBe("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    expect(copyright).toMatch(/^License: Expat$/m)
    expect(copyright).toMatch(/^License: Node.js$/m)
    for (const gz of [`usr/share/doc/${PACKAGE}/changelog.Debian.gz`, `usr/share/man/man1/${PACKAGE}.1.gz`]) {
      const bytes = readFileSync(join(tree, gz))
      // -n: no name (FLG.FNAME clear) and no time stamp (MTIME 0), so rebuilds are identical; -9: XFL 2.
      expect(bytes[3]! & 0x08).toBe(0)
      expect(bytes.readUInt32LE(4)).toBe(0)
      expect(bytes[8]).toBe(2)
    }
    const changelog = gunzipSync(readFileSync(join(tree, `usr/share/doc/${PACKAGE}/changelog.Debian.gz`))).toString("utf8")
    expect(changelog.split("\n")[0]).toBe(`${PACKAGE} (${version}) unstable; urgency=medium`)
    expect(changelog).toMatch(/^ -- [^<>]+ <[^<>]+>  \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000$/m)
  })

  it("has maintainer scripts in POSIX sh with set -e, which dash accepts", () => {
    for (const script of ["postinst", "postrm"]) {
      const path = join(control, script)
      const text = readFileSync(path, "utf8")
      expect(text.startsWith("#!/bin/sh\n")).toBe(true)
      expect(text).toMatch(/^set -e$/m)
      expect(lstatSync(path).mode & 0o777).toBe(0o755)
      const dash = run("dash", ["-n", path])
      expect(dash.status, dash.stderr).toBe(0)
    }
  })
})

/** Man source to comparable text: `\-` is a minus, font escapes and named glyphs go. */
const manText = (roff: string) =>
  roff
    .replace(/\\-/g, "-")
    .replace(/\\f[BIRP]|\\f\(..|\\f\[[^\]]*\]/g, "")
    .replace(/\\\(dq/g, "\"")
    .replace(/\\\(aq/g, "'")
    .replace(/\\e/g, "\\")

/** The roff text of a section (`.SH NAME` up to the next `.SH`). */
const section = (roff: string, name: string): string => {
  const start = roff.search(new RegExp(`^\\.SH "?${name}"?$`, "m"))
  if (start === -1) return ""
  const rest = roff.slice(start + 1)
  const end = rest.search(/^\.SH /m)
  return end === -1 ? rest : rest.slice(0, end)
}

const stripAnsi = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, "")

const help = (args: ReadonlyArray<string>): string => {
  const result = run(process.execPath, [bundle, ...args, "--help"], { NO_COLOR: "1" })
  if (result.status !== 0) throw new Error(`--help of ${args.join(" ") || "the program"} exited ${result.status}: ${result.stderr}`)
  return stripAnsi(result.stdout)
}

/** The options a help text lists: its OPTIONS lines, e.g. `--tags text`, `(-v, --verbose)`. */
const optionsIn = (helpText: string): Array<string> => {
  const options = helpText.split(/^COMMANDS$/m)[0]?.split(/^OPTIONS$/m)[1] ?? ""
  return options
    .split("\n")
    .filter((line) => /^\(?-/.test(line))
    .flatMap((line) => [...line.matchAll(/(?<![\w-])(--?[A-Za-z][\w-]*)/g)].map((match) => match[1] ?? ""))
}

/** The commands a help text lists: `  - fetch [--tags text] ...  Write the caller's ...`. */
const commandsIn = (helpText: string): Array<string> =>
  [...(helpText.split(/^COMMANDS$/m)[1] ?? "").matchAll(/^\s+- (\S+)/gm)].map((match) => match[1] ?? "")

describe("the man page", () => {
  let roff: string
  let text: string

  beforeAll(() => {
    if (!existsSync(bundle)) throw new Error(`${bundle} is missing: run npm run build first`)
    roff = gunzipSync(readFileSync(join(tree, `usr/share/man/man1/${PACKAGE}.1.gz`))).toString("utf8")
    text = manText(roff)
  })

  it("is man/op-secret-manager.1 of the repository", () => {
    expect(roff).toBe(readFileSync(join(repoRoot, `man/${PACKAGE}.1`), "utf8"))
  })

  it("renders without a single groff warning", () => {
    const result = run("groff", ["-man", "-ww", "-z", "-Tutf8", join(repoRoot, `man/${PACKAGE}.1`)])
    expect(result.stderr).toBe("")
    expect(result.status).toBe(0)
  })

  it("has the sections of a man page, in order", () => {
    const sections = [...roff.matchAll(/^\.SH "?([^"\n]+)"?$/gm)].map((match) => match[1])
    const required = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "FILES", "EXIT STATUS", "SECURITY", "EXAMPLES", "SEE ALSO"]
    expect(sections.filter((name) => required.includes(name ?? ""))).toEqual(required)
    expect(section(text, "NAME")).toMatch(/^op-secret-manager - \S/m)
  })

  it("shows every command of --help, cleanup/--cleanup and --version in the SYNOPSIS", () => {
    const synopsis = section(text, "SYNOPSIS")
    const commands = commandsIn(help([]))
    expect(commands).toEqual(expect.arrayContaining(["fetch", "cleanup"]))
    for (const command of [...commands, "check", "doctor", "install"]) {
      expect(synopsis, command).toMatch(new RegExp(`^\\.(B|BR|RB) (\\[ )?${command}\\b`, "m"))
    }
    expect(synopsis).toMatch(/^\.BR cleanup \| --cleanup$/m)
    expect(synopsis).toMatch(/^\.B --version$/m)
  })

  it("documents, under OPTIONS, every option that --help of the program and of each command lists", () => {
    const options = section(text, "OPTIONS")
    // The tag line of each .TP entry, e.g. `.BR -v ", " --verbose` or `.BI --tags " T1,T2"`.
    const documented = new Set([...options.matchAll(/^\.TP\n\.(?:B|BR|BI|RB) (.*)$/gm)]
      .flatMap((match) => [...(match[1] ?? "").matchAll(/(?<![\w-])(--?[A-Za-z][\w-]*)/g)].map((flag) => flag[1] ?? "")))
    const listed = new Set([...optionsIn(help([])), ...commandsIn(help([])).flatMap((command) => optionsIn(help([command])))])
    expect(listed.size).toBeGreaterThan(10)
    expect([...listed].filter((flag) => !documented.has(flag))).toEqual([])
    // Also the options of commands that are not in this build yet (being added in parallel).
    for (const flag of ["--quiet", "--service-user", "--prefix", "--dry-run", "--cleanup"]) expect(documented).toContain(flag)
  })

  it("documents every exit code of README.md's table under EXIT STATUS", () => {
    const readme = readFileSync(join(repoRoot, "README.md"), "utf8")
    const table = readme.split(/^## Exit codes$/m)[1]?.split(/^## /m)[0] ?? ""
    const codes = [...table.matchAll(/^\| ([\d /]+) \|/gm)].flatMap((match) => (match[1] ?? "").split("/").map((code) => code.trim()))
    expect(codes).toEqual(["0", "64", "65", "66", "69", "73", "75", "77", "78", "130", "143"])
    const exitStatus = section(text, "EXIT STATUS")
    const documented = [...exitStatus.matchAll(/^\.TP\n\.B (\d+)$/gm)].map((match) => match[1])
    expect(documented).toEqual(codes)
  })

  it("documents every environment variable the program reads", () => {
    const environment = section(text, "ENVIRONMENT")
    const fromHelp = [...help([]).matchAll(/env: ([A-Z_]+)/g)].map((match) => match[1] ?? "")
    for (const variable of new Set([...fromHelp, "OP_API_KEY_PATH", "OP_MAP_FILE_PATH", "OP_TAGS", "OP_UNTAGGED", "NO_COLOR", "JOURNAL_STREAM"])) {
      expect(environment, variable).toMatch(new RegExp(`^\\.TP\\n\\.B ${variable}$`, "m"))
    }
  })

  it("names the installed files under FILES", () => {
    const files = section(text, "FILES")
    for (const path of [BIN, `${ETC}/api`, `${ETC}/mapfile`]) expect(files).toContain(`.I ${path}`)
  })
})

// ---------------------------------------------------------------------------------------------
// Installed on this machine (root only)
// ---------------------------------------------------------------------------------------------

/** Records what this suite created, so that a run after a crashed one can still undo it. */
const MARKER = "/var/tmp/op-secret-manager-package-test.json"

interface Created {
  readonly user: boolean
  readonly group: boolean
}

const dpkgKnows = (): boolean => {
  const result = run("dpkg-query", ["-W", "-f", "${db:Status-Status}", PACKAGE])
  return result.status === 0 && result.stdout.trim() !== "" && result.stdout.trim() !== "not-installed"
}
const userExists = (name: string) => run("getent", ["passwd", name]).status === 0
const groupExists = (name: string) => run("getent", ["group", name]).status === 0
const statOf = (path: string) => ok("stat", ["-c", "%U:%G %a", path]).trim()
const override = (path: string) => run("dpkg-statoverride", ["--list", path])

const removeCreatedAccount = (created: Created) => {
  if (created.user && userExists(SVC)) ok("userdel", [SVC])
  // userdel also removes the user's own group (USERGROUPS_ENAB); groupdel covers the other case.
  if (created.group && groupExists(SVC)) ok("groupdel", [SVC])
}

/** A previous run of this suite died before it cleaned up: what it left is ours to remove. */
const leftover = isRoot && existsSync(MARKER)
/**
 * Otherwise an installed package, or the tool installed by hand (README) or by
 * `op-secret-manager install`, belongs to the administrator: not ours to replace or purge.
 */
const foreignInstallation = isRoot && !leftover && (dpkgKnows() || existsSync(BIN) || existsSync(ETC))
if (foreignInstallation) console.warn(`package.test.ts: ${PACKAGE} is already on this machine (package or manual install); the dpkg suite is skipped`)

describe.skipIf(!isRoot || foreignInstallation)("the package installed with dpkg on this machine (root)", () => {
  let created: Created = { user: false, group: false }
  const extraOverrides: Array<string> = []

  const purge = () => ok("dpkg", ["--purge", PACKAGE], {}, DPKG_TIMEOUT)

  beforeAll(() => {
    // A previous run that died half-way: purge its package and remove the account it created.
    if (leftover) {
      rmSync(`${ETC}/vault.json`, { force: true })
      // The override the statoverride test adds, if it died before removing it.
      if (override(`${ETC}/mapfile`).stdout === `root root 600 ${ETC}/mapfile\n`) ok("dpkg-statoverride", ["--remove", `${ETC}/mapfile`])
      if (dpkgKnows()) purge()
      removeCreatedAccount(JSON.parse(readFileSync(MARKER, "utf8")) as Created)
      rmSync(MARKER)
    }
    created = { user: !userExists(SVC), group: !groupExists(SVC) }
    writeFileSync(MARKER, JSON.stringify(created))
  })

  afterAll(() => {
    for (const path of extraOverrides) run("dpkg-statoverride", ["--remove", path])
    if (dpkgKnows()) purge()
    removeCreatedAccount(created)
    rmSync(MARKER, { force: true })
    expect(dpkgKnows()).toBe(false)
    expect(userExists(SVC)).toBe(!created.user)
    expect(groupExists(SVC)).toBe(!created.group)
  }, DPKG_TIMEOUT)

  it("installs with dpkg -i; postinst creates op as a system account with no shell and no home", () => {
    ok("dpkg", ["-i", deb], {}, DPKG_TIMEOUT)
    expect(ok("dpkg-query", ["-W", "-f", "${db:Status-Abbrev}", PACKAGE]).trim()).toBe("ii")
    const [name, , uid, gid, , home, shell] = ok("getent", ["passwd", SVC]).trim().split(":")
    expect(name).toBe(SVC)
    expect(gid).toBe(ok("getent", ["group", SVC]).split(":")[2])
    if (created.user) {
      expect(Number(uid)).toBeLessThan(1000)
      expect(home).toBe("/nonexistent")
      expect(shell).toBe("/usr/sbin/nologin")
      expect(existsSync("/nonexistent")).toBe(false)
    }
  }, DPKG_TIMEOUT)

  it("makes the executable op:op 6755 through a dpkg-statoverride", () => {
    expect(statOf(BIN)).toBe("op:op 6755")
    const listed = override(BIN)
    expect(listed.status).toBe(0)
    expect(listed.stdout).toBe(`op op 6755 ${BIN}\n`)
  })

  it("sets the configuration's owners and modes: directory root:root 0755, mapfile root:op 0640, api op:op 0600 and empty", () => {
    expect(statOf(ETC)).toBe("root:root 755")
    expect(statOf(`${ETC}/mapfile`)).toBe("root:op 640")
    expect(statOf(`${ETC}/api`)).toBe("op:op 600")
    expect(lstatSync(`${ETC}/api`).size).toBe(0)
    expect(ok("dpkg-query", ["-W", "-f", "${Conffiles}", PACKAGE])).toMatch(new RegExp(`^ ${ETC}/mapfile [0-9a-f]{32}$`, "m"))
    expect(existsSync(`/usr/share/man/man1/${PACKAGE}.1.gz`)).toBe(true)
  })

  it("runs: --version, and as another user it reads the op-only mapfile through the set-user-ID bit", () => {
    expect(ok(BIN, ["--version"])).toBe(`${PACKAGE} ${packageVersion}\n`)
    // nobody cannot read the root:op 0640 mapfile; the elevated run can, then drops to nobody,
    // who has no line in it (77, not 66 "unreadable").
    const asNobody = run("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN, "--cleanup", "-v"])
    expect(asNobody.stderr).toMatch(/privileges: uid \d+->65534 gid \d+->65534; .*regain: EPERM/)
    expect(asNobody.stderr).toContain(`user nobody has no entries in mapfile ${ETC}/mapfile`)
    expect(asNobody.status).toBe(77)
  })

  it("passes its own doctor once configured with a credential", () => {
    // `doctor --help` also exits 0 in a build without doctor (the program's help is printed),
    // so the usage line tells whether the command exists.
    const doctorHelp = run(BIN, ["doctor", "--help"], { NO_COLOR: "1" })
    const hasDoctor = doctorHelp.status === 0 && /^\$ doctor\b/m.test(stripAnsi(doctorHelp.stdout))
    if (!hasDoctor) {
      // TODO(doctor): the doctor command is being added in parallel; this build has none, so only
      // --version (above) proves the installed executable runs. Drop this branch once it lands.
      expect(ok(BIN, ["--version"])).toBe(`${PACKAGE} ${packageVersion}\n`)
      return
    }
    const vault = `${ETC}/vault.json`
    try {
      writeFileSync(vault, "{}\n", { mode: 0o600 })
      ok("chown", ["op:op", vault])
      writeFileSync(`${ETC}/api`, `file:${vault}\n`)
      const doctor = run(BIN, ["doctor"], { NO_COLOR: "1" })
      expect(doctor.stdout).toMatch(/^ok\s+executable: /m)
      expect(doctor.stdout).not.toMatch(/^fail/m)
      expect(doctor.status, doctor.stdout + doctor.stderr).toBe(0)
    } finally {
      rmSync(vault, { force: true })
      writeFileSync(`${ETC}/api`, "")
    }
    expect(statOf(`${ETC}/api`)).toBe("op:op 600")
  })

  it("is idempotent: reinstalling and re-running postinst keep the credential's content and every owner and mode", () => {
    writeFileSync(`${ETC}/api`, "file:/nonexistent/vault.json\n")
    const paths = [BIN, ETC, `${ETC}/mapfile`, `${ETC}/api`]
    const before = paths.map(statOf)
    ok("dpkg", ["-i", deb], {}, DPKG_TIMEOUT)
    ok(`/var/lib/dpkg/info/${PACKAGE}.postinst`, ["configure", version])
    ok(`/var/lib/dpkg/info/${PACKAGE}.postinst`, ["configure", version])
    expect(paths.map(statOf)).toEqual(before)
    expect(readFileSync(`${ETC}/api`, "utf8")).toBe("file:/nonexistent/vault.json\n")
    expect(override(BIN).stdout).toBe(`op op 6755 ${BIN}\n`)
  }, DPKG_TIMEOUT)

  it("leaves a path alone that the administrator gave a dpkg-statoverride", () => {
    const mapfile = `${ETC}/mapfile`
    extraOverrides.push(mapfile)
    ok("dpkg-statoverride", ["--update", "--add", "root", "root", "0600", mapfile])
    ok(`/var/lib/dpkg/info/${PACKAGE}.postinst`, ["configure", version])
    expect(statOf(mapfile)).toBe("root:root 600")
    ok("dpkg-statoverride", ["--remove", mapfile])
    extraOverrides.pop()
    ok(`/var/lib/dpkg/info/${PACKAGE}.postinst`, ["configure", version])
    expect(statOf(mapfile)).toBe("root:op 640")
  })

  it("purges everything it installed and created except the op account (Debian keeps system users)", () => {
    purge()
    expect(dpkgKnows()).toBe(false)
    for (const path of [BIN, ETC, `/usr/share/man/man1/${PACKAGE}.1.gz`, `/usr/share/doc/${PACKAGE}`]) expect(existsSync(path), path).toBe(false)
    expect(override(BIN).status).toBe(1)
    expect(userExists(SVC)).toBe(true)
  }, DPKG_TIMEOUT)

  it("creates op with useradd on a host without adduser", (context) => {
    // Only an account this suite created may be deleted to run postinst's other branch.
    if (!created.user || !created.group) context.skip()
    removeCreatedAccount(created)
    expect(userExists(SVC) || groupExists(SVC)).toBe(false)
    // A PATH like the system's, without adduser and addgroup.
    const shadow = join(work, "path-without-adduser")
    mkdirSync(shadow)
    for (const dir of ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"]) {
      if (!existsSync(dir)) continue
      for (const name of readdirSync(dir)) {
        if (["adduser", "addgroup", "deluser", "delgroup"].includes(name) || existsSync(join(shadow, name))) continue
        symlinkSync(join(dir, name), join(shadow, name))
      }
    }
    expect(run("sh", ["-c", "command -v adduser"], { PATH: shadow }).status).not.toBe(0)
    ok("dpkg", ["-i", deb], { PATH: shadow }, DPKG_TIMEOUT)
    const [, , uid, gid, , home, shell] = ok("getent", ["passwd", SVC]).trim().split(":")
    expect(Number(uid)).toBeLessThan(1000)
    expect(gid).toBe(ok("getent", ["group", SVC]).split(":")[2])
    expect(home).toBe("/nonexistent")
    expect(shell).toBe("/usr/sbin/nologin")
    expect(statOf(BIN)).toBe("op:op 6755")
    expect(statOf(`${ETC}/api`)).toBe("op:op 600")
    expect(statOf(`${ETC}/mapfile`)).toBe("root:op 640")
    purge()
    expect(override(BIN).status).toBe(1)
  }, DPKG_TIMEOUT)
})
