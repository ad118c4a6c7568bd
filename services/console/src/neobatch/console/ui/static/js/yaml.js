// A template pasted as JSON or YAML → a plain object. JSON is parsed by the browser; YAML by this
// small reader of the subset templates are written in (block mappings and lists, flow [..] and
// {..}, quoted and plain scalars, | and > blocks, comments), so the console needs no library.
// Anything else is an error naming the line, never a guess.

export class YamlError extends Error {}

export function parseTemplate(text) {
  const trimmed = text.trim();
  if (!trimmed) throw new YamlError("the template is empty");
  if (trimmed.startsWith("{")) {
    try {
      return JSON.parse(trimmed);
    } catch (error) {
      throw new YamlError(`not valid JSON: ${error.message}`);
    }
  }
  return parseYaml(text);
}

export function parseYaml(text) {
  const lines = [];
  text.split("\n").forEach((raw, index) => {
    const line = raw.replace(/\r$/, "");
    if (/\t/.test(line.match(/^\s*/)[0])) throw new YamlError(`line ${index + 1}: tabs indent`);
    const body = stripComment(line);
    if (body.trim() === "" || body.trim() === "---") {
      lines.push({ n: index + 1, indent: -1, text: "", raw: line });
    } else {
      lines.push({ n: index + 1, indent: body.match(/^ */)[0].length, text: body.trim(), raw: line });
    }
  });
  const reader = { lines, i: 0 };
  skipBlank(reader);
  if (reader.i >= lines.length) throw new YamlError("the template is empty");
  const value = block(reader, lines[reader.i].indent);
  skipBlank(reader);
  if (reader.i < lines.length) {
    throw new YamlError(`line ${lines[reader.i].n}: unexpected indentation`);
  }
  return value;
}

function skipBlank(r) {
  while (r.i < r.lines.length && r.lines[r.i].indent < 0) r.i++;
}

function block(r, indent) {
  skipBlank(r);
  const first = r.lines[r.i];
  if (first.text.startsWith("- ") || first.text === "-") return sequence(r, indent);
  return mapping(r, indent);
}

function sequence(r, indent) {
  const out = [];
  for (;;) {
    skipBlank(r);
    const line = r.lines[r.i];
    if (!line || line.indent < indent) return out;
    if (line.indent > indent) throw new YamlError(`line ${line.n}: unexpected indentation`);
    if (!(line.text.startsWith("- ") || line.text === "-")) {
      throw new YamlError(`line ${line.n}: expected a list item "- ..."`);
    }
    const rest = line.text.slice(1).trimStart();
    if (rest === "") {
      r.i++;
      skipBlank(r);
      const next = r.lines[r.i];
      out.push(next && next.indent > indent ? block(r, next.indent) : null);
    } else if (keyOf(rest)) {
      // "- key: value" opens a mapping whose keys sit at the item's column.
      const column = indent + (line.text.length - rest.length);
      r.lines[r.i] = { ...line, indent: column, text: rest };
      out.push(mapping(r, column));
    } else {
      r.i++;
      out.push(scalarOrBlock(r, rest, line, indent));
    }
  }
}

function mapping(r, indent) {
  const out = Object.create(null); // no prototype: a key "__proto__" is only a key
  for (;;) {
    skipBlank(r);
    const line = r.lines[r.i];
    if (!line || line.indent < indent) return out;
    if (line.indent > indent) throw new YamlError(`line ${line.n}: unexpected indentation`);
    const found = keyOf(line.text);
    if (!found) throw new YamlError(`line ${line.n}: expected "key: value"`);
    const [key, rest] = found;
    if (Object.prototype.hasOwnProperty.call(out, key)) {
      throw new YamlError(`line ${line.n}: key ${JSON.stringify(key)} appears twice`);
    }
    r.i++;
    if (rest === "") {
      skipBlank(r);
      const next = r.lines[r.i];
      const nested = next && (next.indent > indent ||
        (next.indent === indent && (next.text.startsWith("- ") || next.text === "-")));
      out[key] = nested ? block(r, next.indent) : null;
    } else {
      out[key] = scalarOrBlock(r, rest, line, indent);
    }
  }
}

function scalarOrBlock(r, text, line, indent) {
  const literal = text.match(/^([|>])([+-]?)$/);
  if (!literal) return scalar(text, line.n);
  const parts = [];
  let column = -1;
  while (r.i < r.lines.length) {
    const next = r.lines[r.i];
    const lead = next.raw.match(/^ */)[0].length;
    if (next.raw.trim() !== "" && lead <= indent) break;
    if (column < 0 && next.raw.trim() !== "") column = lead;
    parts.push(next.raw.slice(Math.max(column, 0)));
    r.i++;
  }
  while (parts.length && parts[parts.length - 1].trim() === "") parts.pop();
  const joined = literal[1] === "|" ? parts.join("\n") : parts.join(" ").replace(/ {2,}/g, " ");
  return literal[2] === "-" ? joined : `${joined}\n`;
}

function keyOf(text) {
  const quoted = text.match(/^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*')\s*:(?:\s+(.*))?$/);
  if (quoted) return [scalar(quoted[1], 0), (quoted[2] || "").trim()];
  const plain = text.match(/^([^\s"'\[\]{},#&*!|>%@`-][^:#]*?|-[^\s:][^:#]*?)\s*:(?:\s+(.*))?$/);
  if (!plain) return null;
  return [plain[1], (plain[2] || "").trim()];
}

function stripComment(line) {
  let quote = "";
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === "\\" && quote === '"') i++;
      else if (c === quote) quote = "";
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) {
      return line.slice(0, i);
    }
  }
  return line;
}

function scalar(text, n) {
  const t = text.trim();
  if (t.startsWith("[") || t.startsWith("{")) {
    const state = { s: t, i: 0, n };
    const value = flow(state);
    if (t.slice(state.i).trim() !== "") throw new YamlError(`line ${n}: text after ${t[0]}...`);
    return value;
  }
  if (t.startsWith('"')) {
    try {
      return JSON.parse(t);
    } catch {
      throw new YamlError(`line ${n}: bad double-quoted string`);
    }
  }
  if (t.startsWith("'")) {
    if (!/^'(?:[^']|'')*'$/.test(t)) throw new YamlError(`line ${n}: bad single-quoted string`);
    return t.slice(1, -1).replace(/''/g, "'");
  }
  if (/^[&*!%@`]/.test(t)) throw new YamlError(`line ${n}: anchors, tags and aliases are not read here; use JSON`);
  if (t === "~" || t === "null" || t === "Null" || t === "NULL") return null;
  if (/^(true|True|TRUE)$/.test(t)) return true;
  if (/^(false|False|FALSE)$/.test(t)) return false;
  if (/^[-+]?\d+$/.test(t)) return Number(t);
  if (/^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$/.test(t)) return Number(t);
  return t;
}

function flow(st) {
  space(st);
  const c = st.s[st.i];
  if (c === "[") {
    st.i++;
    const out = [];
    space(st);
    if (st.s[st.i] === "]") { st.i++; return out; }
    for (;;) {
      out.push(flow(st));
      space(st);
      const d = st.s[st.i++];
      if (d === "]") return out;
      if (d !== ",") throw new YamlError(`line ${st.n}: expected , or ] in a [...] list`);
    }
  }
  if (c === "{") {
    st.i++;
    const out = Object.create(null); // no prototype: a key "__proto__" is only a key
    space(st);
    if (st.s[st.i] === "}") { st.i++; return out; }
    for (;;) {
      const key = flowScalar(st, ":");
      if (st.s[st.i++] !== ":") throw new YamlError(`line ${st.n}: expected : in a {...} mapping`);
      out[String(key)] = flow(st);
      space(st);
      const d = st.s[st.i++];
      if (d === "}") return out;
      if (d !== ",") throw new YamlError(`line ${st.n}: expected , or } in a {...} mapping`);
    }
  }
  return flowScalar(st, ",]}");
}

function flowScalar(st, stops) {
  space(st);
  const start = st.i;
  const c = st.s[st.i];
  if (c === '"' || c === "'") {
    st.i++;
    while (st.i < st.s.length && st.s[st.i] !== c) st.i += st.s[st.i] === "\\" && c === '"' ? 2 : 1;
    st.i++;
    const value = scalar(st.s.slice(start, st.i), st.n);
    space(st);
    return value;
  }
  while (st.i < st.s.length && !stops.includes(st.s[st.i])) st.i++;
  return scalar(st.s.slice(start, st.i), st.n);
}

function space(st) {
  while (st.i < st.s.length && /\s/.test(st.s[st.i])) st.i++;
}
