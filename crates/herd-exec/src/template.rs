//! Command templates: the words of `herd run CMD...` with GNU parallel's
//! placeholders, expanded into one argv per job.
//!
//! | placeholder | becomes | `dir/sub/file.tar.gz` |
//! |---|---|---|
//! | `{}` | the item | `dir/sub/file.tar.gz` |
//! | `{.}` | the item without its extension | `dir/sub/file.tar` |
//! | `{/}` | its basename | `file.tar.gz` |
//! | `{//}` | its dirname | `dir/sub` |
//! | `{/.}` | its basename without extension | `file.tar` |
//! | `{#}` | the job number, from 1 | |
//! | `{name}` | the field `name` of a CSV or JSON Lines item | |
//! | `{{`, `}}` | a literal `{`, `}` | |
//!
//! The path placeholders do exactly what GNU parallel's definitions do
//! (`parallel(1)`, "--rpl"): `{.}` is `s:\.[^/.]+$::` (only the last
//! extension of the last path component: `.bashrc` becomes empty, as in
//! parallel), `{/}` is `s:.*/::` (`dir/` gives an empty basename), `{/.}` is
//! both, and `{//}` is Perl's `File::Basename::dirname`, which is
//! `dirname(1)`: `file` gives `.`, `/file` gives `/`, `dir/sub/` gives `dir`.
//! One difference: Perl's `.` and `$` stop at newlines, ours treat a newline
//! like any other character.
//!
//! A template without any item placeholder (`{}`, a path one or a field) gets
//! the item appended as its last argument, as with parallel and xargs. `{#}`
//! alone does not count: `echo {#}` runs `echo 1 ITEM`.
//!
//! # Chunks
//!
//! Several items can go to one invocation (`-n N`, like `xargs -n`): a word
//! holding an item placeholder then becomes one argument per item, in order
//! (`cp {} dest/` with `a b` runs `cp a b dest/`); the appended last argument
//! becomes every item.
//!
//! # Shell or not
//!
//! Without `shell`, every expanded word is exactly one argument of the
//! program: nothing is split, globbed or interpreted, so no item can inject
//! anything. With `shell`, the words are joined with spaces into a script
//! run as `sh -c SCRIPT`; the template text is the user's shell code and is
//! left as is, while every value put in (an item, a path part, a field) is
//! single-quoted, so that `$(touch pwned)` or `; rm -rf x` in an item stays
//! text. A chunk's values in one word are joined with spaces, each quoted.
//! Braces are still placeholders there: write the shell's `${VAR}` as
//! `${{VAR}}` (unescaped, `{VAR}` is taken for a field, and
//! [`Template::check_fields`] says so).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// One input item: a line, a CSV row or a JSON Lines object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Item {
    /// What `{}` becomes: the line, the row as CSV, the object's JSON text.
    pub text: String,
    /// The named fields `{name}` can use: CSV columns, JSON top-level keys.
    pub fields: Option<Arc<Map<String, Value>>>,
}

impl Item {
    /// An item without fields (a line of text).
    pub fn new(text: impl Into<String>) -> Self {
        Item {
            text: text.into(),
            fields: None,
        }
    }

    /// An item with named fields.
    pub fn with_fields(text: impl Into<String>, fields: Map<String, Value>) -> Self {
        Item {
            text: text.into(),
            fields: Some(Arc::new(fields)),
        }
    }

    /// The value of field `name` as text: strings as they are, `null` and
    /// missing fields as empty, anything else as its JSON text.
    pub fn field(&self, name: &str) -> Cow<'_, str> {
        match self.fields.as_deref().and_then(|f| f.get(name)) {
            None | Some(Value::Null) => Cow::Borrowed(""),
            Some(Value::String(s)) => Cow::Borrowed(s),
            Some(other) => Cow::Owned(other.to_string()),
        }
    }
}

/// A template that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// No words at all.
    #[error("empty command: give the program to run, and its arguments")]
    Empty,
    /// `{...}` that is not a placeholder.
    #[error(
        "unknown placeholder {placeholder} in {word:?}: valid are {{}} {{.}} {{/}} {{//}} {{/.}} {{#}} and {{field}} (a CSV column or JSON key); write {{{{ and }}}} for literal braces"
    )]
    UnknownPlaceholder {
        /// The placeholder, braces included.
        placeholder: String,
        /// The word it is in.
        word: String,
    },
    /// A `{` without its `}`.
    #[error("unclosed {{ in {word:?}: close the placeholder, or write {{{{ for a literal brace")]
    Unclosed {
        /// The word.
        word: String,
    },
    /// `{name}` names a field the input does not have.
    #[error("unknown field {{{field}}}: {}", available_fields(.available))]
    UnknownField {
        /// The field.
        field: String,
        /// The fields the input has.
        available: Vec<String>,
    },
}

fn available_fields(available: &[String]) -> String {
    if available.is_empty() {
        "the input has no named fields (only CSV and JSON Lines inputs do); write {{ and }} for literal braces".into()
    } else {
        let names: Vec<String> = available.iter().map(|f| format!("{{{f}}}")).collect();
        format!(
            "the input has {}; write {{{{ and }}}} for literal braces",
            names.join(" ")
        )
    }
}

/// One piece of a word.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `{#}`
    Job,
    /// A placeholder that takes its value from an item.
    Item(Part),
}

/// What of an item a placeholder takes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// `{}`
    Whole,
    /// `{.}`
    NoExt,
    /// `{/}`
    Base,
    /// `{//}`
    Dir,
    /// `{/.}`
    BaseNoExt,
    /// `{name}`
    Field(String),
}

impl Part {
    fn value<'a>(&self, item: &'a Item) -> Cow<'a, str> {
        match self {
            Part::Whole => Cow::Borrowed(&item.text),
            Part::NoExt => Cow::Borrowed(without_extension(&item.text)),
            Part::Base => Cow::Borrowed(basename(&item.text)),
            Part::Dir => Cow::Borrowed(dirname(&item.text)),
            Part::BaseNoExt => Cow::Borrowed(without_extension(basename(&item.text))),
            Part::Field(name) => item.field(name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Word {
    pieces: Vec<Piece>,
}

impl Word {
    fn has_item(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Item(_)))
    }

    /// The word for one item (or none: `{#}` and text only), values quoted in shell mode.
    fn render(&self, job: u64, item: Option<&Item>, shell: bool, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Job => {
                    use fmt::Write;
                    let _ = write!(out, "{job}");
                }
                Piece::Item(part) => {
                    let value = item.map(|item| part.value(item)).unwrap_or_default();
                    if shell {
                        shell_quote_into(&value, out);
                    } else {
                        out.push_str(&value);
                    }
                }
            }
        }
    }
}

/// A parsed command template. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    words: Vec<Word>,
    shell: bool,
    /// No word has an item placeholder: the items go last.
    append: bool,
}

impl Template {
    /// Parses the words of a command; with `shell`, they are a script for `sh -c`.
    pub fn parse(words: &[String], shell: bool) -> Result<Template, TemplateError> {
        if words.is_empty() || (shell && words.iter().all(|w| w.trim().is_empty())) {
            return Err(TemplateError::Empty);
        }
        let words = words
            .iter()
            .map(|w| parse_word(w))
            .collect::<Result<Vec<_>, _>>()?;
        let append = !words.iter().any(Word::has_item);
        Ok(Template {
            words,
            shell,
            append,
        })
    }

    /// Whether the words run as a shell script.
    pub fn is_shell(&self) -> bool {
        self.shell
    }

    /// The named fields the template uses, in order of appearance (repeats included).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.words.iter().flat_map(|w| {
            w.pieces.iter().filter_map(|p| match p {
                Piece::Item(Part::Field(name)) => Some(name.as_str()),
                _ => None,
            })
        })
    }

    /// Checks that every field the template uses is in `available` (a CSV
    /// header, the keys of a JSON Lines input); names the first that is not.
    pub fn check_fields(&self, available: &[String]) -> Result<(), TemplateError> {
        match self.fields().find(|f| !available.iter().any(|a| a == f)) {
            None => Ok(()),
            Some(field) => Err(TemplateError::UnknownField {
                field: field.to_string(),
                available: available.to_vec(),
            }),
        }
    }

    /// The argv of job number `job` (1-based) over `items` (one, or a chunk).
    pub fn expand(&self, job: u64, items: &[Item]) -> Vec<String> {
        if self.shell {
            let mut script = String::new();
            for (i, word) in self.words.iter().enumerate() {
                if i > 0 {
                    script.push(' ');
                }
                self.render_joined(word, job, items, &mut script);
            }
            if self.append {
                for item in items {
                    script.push(' ');
                    shell_quote_into(&item.text, &mut script);
                }
            }
            return vec!["sh".into(), "-c".into(), script];
        }
        let mut argv =
            Vec::with_capacity(self.words.len() + usize::from(self.append) * items.len());
        for word in &self.words {
            if word.has_item() {
                for item in items {
                    let mut arg = String::new();
                    word.render(job, Some(item), false, &mut arg);
                    argv.push(arg);
                }
            } else {
                let mut arg = String::new();
                word.render(job, None, false, &mut arg);
                argv.push(arg);
            }
        }
        if self.append {
            argv.extend(items.iter().map(|i| i.text.clone()));
        }
        argv
    }

    /// A word of a script: once per item, joined with spaces, if it has an item placeholder.
    fn render_joined(&self, word: &Word, job: u64, items: &[Item], out: &mut String) {
        if !word.has_item() {
            word.render(job, None, true, out);
            return;
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            word.render(job, Some(item), true, out);
        }
    }
}

fn parse_word(word: &str) -> Result<Word, TemplateError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = word;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let brace = rest.as_bytes()[i];
        let after = &rest[i + 1..];
        if brace == b'}' {
            // `}}` is a literal `}`; so is a lone `}` (no placeholder can close there).
            text.push('}');
            rest = after.strip_prefix('}').unwrap_or(after);
            continue;
        }
        if let Some(after) = after.strip_prefix('{') {
            text.push('{');
            rest = after;
            continue;
        }
        let Some(close) = after.find('}') else {
            return Err(TemplateError::Unclosed { word: word.into() });
        };
        let name = &after[..close];
        let piece = match name {
            "" => Piece::Item(Part::Whole),
            "." => Piece::Item(Part::NoExt),
            "/" => Piece::Item(Part::Base),
            "//" => Piece::Item(Part::Dir),
            "/." => Piece::Item(Part::BaseNoExt),
            "#" => Piece::Job,
            _ if is_field_name(name) => Piece::Item(Part::Field(name.into())),
            _ => {
                return Err(TemplateError::UnknownPlaceholder {
                    placeholder: format!("{{{name}}}"),
                    word: word.into(),
                });
            }
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(piece);
        rest = &after[close + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(Word { pieces })
}

/// A field name starts with a letter or `_` and holds no braces (CSV headers
/// may have spaces, dashes, dots); anything else is taken for a mistyped
/// placeholder.
fn is_field_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && !name.contains('{')
}

/// Appends `value` single-quoted for POSIX sh: `'` becomes `'\''`.
pub fn shell_quote_into(value: &str, out: &mut String) {
    out.reserve(value.len() + 2);
    out.push('\'');
    for (i, part) in value.split('\'').enumerate() {
        if i > 0 {
            out.push_str("'\\''");
        }
        out.push_str(part);
    }
    out.push('\'');
}

/// `value` single-quoted for POSIX sh.
pub fn shell_quote(value: &str) -> String {
    let mut out = String::new();
    shell_quote_into(value, &mut out);
    out
}

/// `{.}`: parallel's `s:\.[^/.]+$::`.
fn without_extension(path: &str) -> &str {
    let last = &path[path.rfind('/').map_or(0, |i| i + 1)..];
    match last.rfind('.') {
        Some(dot) if dot + 1 < last.len() => &path[..path.len() - last.len() + dot],
        _ => path,
    }
}

/// `{/}`: parallel's `s:.*/::`.
fn basename(path: &str) -> &str {
    &path[path.rfind('/').map_or(0, |i| i + 1)..]
}

/// `{//}`: Perl's `File::Basename::dirname` on Unix.
fn dirname(path: &str) -> &str {
    /// `fileparse`: (directory with its trailing `/`, or `./`; the rest).
    fn fileparse(path: &str) -> (&str, &str) {
        match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("./", path),
        }
    }
    /// `s{(.)/*\z}{$1}s`: trailing slashes off, but keep a lone `/`.
    fn strip_trailing_sep(dir: &str) -> &str {
        let trimmed = dir.trim_end_matches('/');
        if trimmed.is_empty() {
            &dir[..dir.len().min(1)]
        } else {
            trimmed
        }
    }
    let (dir, base) = fileparse(path);
    let mut dir = strip_trailing_sep(dir);
    if base.is_empty() {
        dir = strip_trailing_sep(fileparse(dir).0);
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    fn expand(ws: &[&str], shell: bool, job: u64, items: &[&str]) -> Vec<String> {
        let items: Vec<Item> = items.iter().map(|i| Item::new(*i)).collect();
        Template::parse(&words(ws), shell)
            .unwrap()
            .expand(job, &items)
    }

    #[test]
    fn every_placeholder() {
        let argv = expand(
            &[
                "x",
                "{}",
                "{.}",
                "{/}",
                "{//}",
                "{/.}",
                "{#}",
                "j{#}-{/.}.out",
            ],
            false,
            7,
            &["dir/sub/file.tar.gz"],
        );
        assert_eq!(
            argv,
            [
                "x",
                "dir/sub/file.tar.gz",
                "dir/sub/file.tar",
                "file.tar.gz",
                "dir/sub",
                "file.tar",
                "7",
                "j7-file.tar.out"
            ]
        );
    }

    /// The examples of GNU parallel's man page and test suite (test42, test57).
    #[test]
    fn paths_as_gnu_parallel() {
        let cases = [
            // item, {.}, {/}, {//}, {/.}
            ("foo.jpg", "foo", "foo.jpg", ".", "foo"),
            ("subdir/foo.jpg", "subdir/foo", "foo.jpg", "subdir", "foo"),
            (
                "sub.dir/foo.jpg",
                "sub.dir/foo",
                "foo.jpg",
                "sub.dir",
                "foo",
            ),
            ("sub.dir/bar", "sub.dir/bar", "bar", "sub.dir", "bar"),
            ("/a/b.c", "/a/b", "b.c", "/a", "b"),
            ("b.c", "b", "b.c", ".", "b"),
            ("/a/b", "/a/b", "b", "/a", "b"),
            ("a", "a", "a", ".", "a"),
            ("/a", "/a", "a", "/", "a"),
            ("./a/b", "./a/b", "b", "./a", "b"),
            ("./a", "./a", "a", ".", "a"),
            ("a/b/c.jpg", "a/b/c", "c.jpg", "a/b", "c"),
            ("file.tar.gz", "file.tar", "file.tar.gz", ".", "file.tar"),
            (".bashrc", "", ".bashrc", ".", ""),
            ("dir/", "dir/", "", ".", ""),
            ("a/b/", "a/b/", "", "a", ""),
            ("/", "/", "", "/", ""),
            ("", "", "", ".", ""),
            ("file.", "file.", "file.", ".", "file."),
            ("a//b", "a//b", "b", "a", "b"),
            ("//a", "//a", "a", "/", "a"),
        ];
        for (item, ext, base, dir, base_ext) in cases {
            let got = expand(&["{.}", "{/}", "{//}", "{/.}"], false, 1, &[item]);
            assert_eq!(got, [ext, base, dir, base_ext], "item {item:?}");
        }
    }

    #[test]
    fn braces_escape() {
        assert_eq!(
            expand(&["awk", "{{print}}", "{}"], false, 1, &["f"]),
            ["awk", "{print}", "f"]
        );
        assert_eq!(
            expand(&["a}b", "{{}}"], false, 1, &["i"]),
            ["a}b", "{}", "i"]
        );
        assert_eq!(expand(&["{{{}}}"], false, 1, &["i"]), ["{i}"]);
        assert_eq!(
            expand(&["echo", "${{HOME}}", "{}"], true, 1, &["i"]),
            ["sh", "-c", "echo ${HOME} 'i'"]
        );
    }

    #[test]
    fn unknown_placeholders_are_named() {
        let err = Template::parse(&words(&["echo", "x{%}"]), false).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnknownPlaceholder {
                placeholder: "{%}".into(),
                word: "x{%}".into()
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("{%}") && message.contains("{/.}"),
            "{message}"
        );
        assert!(message.contains("{{ and }}"), "{message}");
        for bad in ["{..}", "{1}", "{ }", "{/..}"] {
            assert!(
                matches!(
                    Template::parse(&words(&[bad]), false),
                    Err(TemplateError::UnknownPlaceholder { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            Template::parse(&words(&["echo", "{oops"]), false),
            Err(TemplateError::Unclosed {
                word: "{oops".into()
            })
        );
    }

    #[test]
    fn empty_commands_are_refused() {
        assert_eq!(Template::parse(&[], false), Err(TemplateError::Empty));
        assert_eq!(
            Template::parse(&words(&[" "]), true),
            Err(TemplateError::Empty)
        );
    }

    #[test]
    fn the_item_is_appended_without_placeholder() {
        assert_eq!(
            expand(&["echo", "hi"], false, 1, &["x y"]),
            ["echo", "hi", "x y"]
        );
        assert_eq!(
            expand(&["echo", "{#}"], false, 4, &["x"]),
            ["echo", "4", "x"]
        );
        assert_eq!(expand(&["echo", "{}"], false, 4, &["x"]), ["echo", "x"]);
        assert_eq!(
            expand(&["echo", "{.}"], false, 4, &["x.c"]),
            ["echo", "x"],
            "a path placeholder counts"
        );
        assert_eq!(expand(&["cp"], false, 1, &["a", "b"]), ["cp", "a", "b"]);
    }

    #[test]
    fn chunks_repeat_item_words() {
        assert_eq!(
            expand(&["cp", "{}", "dest/{#}/"], false, 2, &["a", "b c", "d"]),
            ["cp", "a", "b c", "d", "dest/2/"]
        );
        assert_eq!(
            expand(
                &["conv", "--in={}", "--out={/.}.png"],
                false,
                1,
                &["x/a.jpg", "b.jpg"]
            ),
            [
                "conv",
                "--in=x/a.jpg",
                "--in=b.jpg",
                "--out=a.png",
                "--out=b.png"
            ]
        );
        assert_eq!(
            expand(&["echo", "{}"], true, 1, &["a", "it's"]),
            ["sh", "-c", r"echo 'a' 'it'\''s'"]
        );
        assert_eq!(
            expand(&["wc", "-l"], true, 1, &["a", "b"]),
            ["sh", "-c", "wc -l 'a' 'b'"]
        );
    }

    #[test]
    fn fields_of_csv_and_json_items() {
        let mut fields = Map::new();
        fields.insert("name".into(), Value::String("a b".into()));
        fields.insert("n".into(), Value::from(3));
        fields.insert("none".into(), Value::Null);
        fields.insert("list".into(), serde_json::json!([1, "x"]));
        let item = Item::with_fields("row", fields);
        let t = Template::parse(
            &words(&["run", "{name}", "-n{n}", "[{none}]", "{list}", "{missing}"]),
            false,
        )
        .unwrap();
        assert_eq!(
            t.expand(1, std::slice::from_ref(&item)),
            ["run", "a b", "-n3", "[]", r#"[1,"x"]"#, ""]
        );
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            ["name", "n", "none", "list", "missing"]
        );
        let available = words(&["name", "n", "none", "list"]);
        let err = t.check_fields(&available).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field {missing}: the input has {name} {n} {none} {list}; write {{ and }} for literal braces"
        );
        assert!(
            Template::parse(&words(&["x", "{first name}"]), false)
                .unwrap()
                .check_fields(&words(&["first name"]))
                .is_ok()
        );
        let lines = Template::parse(&words(&["echo", "{HOME}"]), true).unwrap();
        assert!(
            lines
                .check_fields(&[])
                .unwrap_err()
                .to_string()
                .contains("no named fields")
        );
        // A field value is quoted like an item in shell mode.
        let t = Template::parse(&words(&["echo", "{name}"]), true).unwrap();
        assert_eq!(t.expand(1, &[item]), ["sh", "-c", "echo 'a b'"]);
    }

    /// Hostile items run through a real `sh` in an empty directory: each is
    /// printed back exactly, and nothing they "say" happens.
    #[test]
    fn hostile_items_stay_inert_in_shell_mode() {
        let dir = tempfile::tempdir().unwrap();
        let hostile = [
            "$(touch pwned)",
            "`touch pwned`",
            "; touch pwned",
            "' ; touch pwned ; '",
            "\"; touch pwned; \"",
            "a\ntouch pwned",
            "x' \"$(touch pwned)\" '",
            "&& touch pwned",
            "| touch pwned",
            "> pwned",
            "$HOME ${PATH} *",
            "\\'\\",
            "",
        ];
        for item in hostile {
            for ws in [
                &["printf", "%s", "{}"][..],
                &["printf", "%s", "pre{}post"][..],
                &["printf", "%s"][..],
            ] {
                let argv = expand(ws, true, 1, &[item]);
                let out = Command::new(&argv[0])
                    .args(&argv[1..])
                    .current_dir(dir.path())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{argv:?}: {out:?}");
                let expected = if ws[2..].first() == Some(&"pre{}post") {
                    format!("pre{item}post")
                } else {
                    item.to_string()
                };
                assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{argv:?}");
                assert!(
                    !dir.path().join("pwned").exists(),
                    "{item:?} escaped its quotes"
                );
            }
        }
        // Without shell, an item is one argument whatever it holds.
        assert_eq!(
            expand(&["echo", "{}"], false, 1, &["$(touch pwned); x"]),
            ["echo", "$(touch pwned); x"]
        );
    }

    /// Runs parallel's own Perl definitions of the path placeholders on
    /// `paths` (joined by NUL), one line of four results per path.
    fn perl_paths(paths: &[String]) -> Option<Vec<[String; 4]>> {
        use std::io::Write;
        let script = r#"
            use File::Basename;
            $/ = "\0";
            while (my $in = <STDIN>) {
                chomp $in;
                my @out;
                $_ = $in; s:\.[^/.]+$::; push @out, $_;
                $_ = $in; s:.*/::; push @out, $_;
                $_ = $in; $_ = dirname($_); push @out, $_;
                $_ = $in; s:.*/::; s:\.[^/.]+$::; push @out, $_;
                print join("\0", @out), "\0";
            }
        "#;
        let mut child = Command::new("perl")
            .args(["-e", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut input = Vec::new();
        for p in paths {
            input.extend_from_slice(p.as_bytes());
            input.push(0);
        }
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let fields: Vec<&str> = text.split('\0').collect();
        Some(
            fields
                .chunks(4)
                .filter(|c| c.len() == 4)
                .map(|c| [0, 1, 2, 3].map(|i| c[i].to_string()))
                .collect(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any value, control characters included, survives quoting: `sh`
        /// prints back exactly what went in.
        #[test]
        fn shell_quoting_round_trips(value in "[\\x01-\\x7f\u{80}-\u{10ffff}]{0,40}", prefix in "[a-z'\"$ ]{0,3}") {
            let items = [Item::new(value.clone())];
            let t = Template::parse(&words(&["printf", "%s", "{}"]), true).unwrap();
            let argv = t.expand(1, &items);
            let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
            prop_assert!(out.status.success());
            prop_assert_eq!(String::from_utf8(out.stdout).unwrap(), value.clone());
            // Quoting does not depend on what comes before the placeholder.
            let q = shell_quote(&value);
            let out = Command::new("sh").arg("-c").arg(format!("printf %s {}{q}", shell_quote(&prefix))).output().unwrap();
            prop_assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{prefix}{value}"));
        }

        /// The path placeholders agree with GNU parallel's Perl definitions.
        #[test]
        fn paths_agree_with_parallels_definitions(paths in proptest::collection::vec("[ab./]{0,8}", 64)) {
            let Some(expected) = perl_paths(&paths) else { return Ok(()); };
            prop_assert_eq!(expected.len(), paths.len());
            let t = Template::parse(&words(&["{.}", "{/}", "{//}", "{/.}"]), false).unwrap();
            for (path, want) in paths.iter().zip(expected) {
                let got = t.expand(1, &[Item::new(path.clone())]);
                prop_assert_eq!(&got[..], &want[..], "path {:?}", path);
            }
        }
    }
}
