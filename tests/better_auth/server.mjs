// A real Better Auth server for tests/test_better_auth.py: email and password sign-up and
// sign-in, and the JWT plugin with its defaults (EdDSA/Ed25519 keys, 15-minute tokens,
// `iss` and `aud` = baseURL, `sub` = the user id), on a SQLite file through better-sqlite3.
//
//   node server.mjs [PORT] [DATABASE_FILE]
//
// PORT (or the PORT variable; 0 = any free port) and DATABASE_FILE (or BETTER_AUTH_DB; default
// ./better-auth.db) are optional. The schema is created from code with Better Auth's own
// migrations (its CLI needs Node 22). Once listening it prints one line on stdout:
//
//   ready http://127.0.0.1:PORT
//
// Endpoints used by the test (basePath /api/auth): POST /sign-up/email, POST /sign-in/email,
// GET /token (session cookie -> {"token": "<JWT>"}) and GET /jwks (the public keys).
// It stops on SIGTERM or SIGINT, and when its standard input is a pipe that closes (the test
// that started it died).

import { fstatSync } from "node:fs";
import http from "node:http";
import process from "node:process";

import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";

const HOST = "127.0.0.1";
// A fixed secret: tests only. It encrypts the JWT plugin's private keys in the database.
const SECRET = "todo-api-tests-better-auth-secret-0123456789abcdef";

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const databaseFile = process.argv[3] ?? process.env.BETTER_AUTH_DB ?? "./better-auth.db";
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${process.argv[2] ?? process.env.PORT}`);
  process.exit(2);
}

let handle = (_request, response) => {
  response.writeHead(503, { "content-type": "text/plain" }).end("starting\n");
};
const server = http.createServer((request, response) => handle(request, response));

// Listen first, so that port 0 resolves to a real port before baseURL is fixed.
await new Promise((resolve, reject) => {
  server.once("error", reject);
  server.listen(port, HOST, resolve);
});
const baseURL = `http://${HOST}:${server.address().port}`;

const database = new Database(databaseFile);
database.pragma("journal_mode = WAL");

const auth = betterAuth({
  baseURL,
  secret: SECRET,
  database,
  emailAndPassword: { enabled: true },
  plugins: [jwt()],
  telemetry: { enabled: false },
});

const { runMigrations } = await getMigrations(auth.options);
await runMigrations();

handle = toNodeHandler(auth);

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close(() => {
    database.close();
    process.exit(0);
  });
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
// Started by the test with a pipe as stdin: the pipe closing means the test is gone.
if (fstatSync(0, { throwIfNoEntry: false })?.isFIFO()) {
  process.stdin.on("end", stop);
  process.stdin.on("error", stop);
  process.stdin.resume();
}

console.log(`ready ${baseURL}`);
