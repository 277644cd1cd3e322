// Keys and tokens for the JWT tests, made with the npm `jose` package (an implementation
// independent of this repository):
//   node t/js/jwt-mint.mjs SPEC.json > TOKENS.json
// SPEC: {
//   "jwks":   [{"file": OUT, "keys": [{"spki": PEM_FILE, "alg": ALG, "kid": K, "jwk_alg": A?},
//                                     {"oct": BASE64URL, "kid": K?}]}],
//   "tokens": {NAME: {"alg": ALG, "pkcs8": PEM_FILE | "secret": BASE64URL | "secret_file": FILE,
//                     "header": {...}, "claims": {...} | "payload_text": "raw bytes"}}
// }
// Writes each JWKS file and prints {NAME: token} for the tokens.
import { readFileSync, writeFileSync } from 'node:fs';
import { CompactSign, SignJWT, exportJWK, importPKCS8, importSPKI, base64url } from 'jose';

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));

for (const set of spec.jwks ?? []) {
  const keys = [];
  for (const k of set.keys) {
    let jwk;
    if (k.oct !== undefined) {
      jwk = { kty: 'oct', k: k.oct };
    } else {
      jwk = await exportJWK(await importSPKI(readFileSync(k.spki, 'utf8'), k.alg, { extractable: true }));
    }
    if (k.kid !== undefined) jwk.kid = k.kid;
    if (k.jwk_alg !== undefined) jwk.alg = k.jwk_alg;
    if (k.use !== undefined) jwk.use = k.use;
    keys.push(jwk);
  }
  writeFileSync(set.file, JSON.stringify({ keys }, null, 2) + '\n');
}

async function signingKey(t) {
  if (t.pkcs8 !== undefined) return importPKCS8(readFileSync(t.pkcs8, 'utf8'), t.alg);
  if (t.secret_file !== undefined) return new Uint8Array(readFileSync(t.secret_file));
  return base64url.decode(t.secret);
}

const out = {};
for (const [name, t] of Object.entries(spec.tokens ?? {})) {
  const key = await signingKey(t);
  const header = { alg: t.alg, ...(t.header ?? {}) };
  if (t.payload_text !== undefined) {
    out[name] = await new CompactSign(new TextEncoder().encode(t.payload_text)).setProtectedHeader(header).sign(key);
  } else {
    out[name] = await new SignJWT(t.claims ?? {}).setProtectedHeader(header).sign(key);
  }
}
process.stdout.write(JSON.stringify(out) + '\n');
