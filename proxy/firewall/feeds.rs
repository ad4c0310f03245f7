//! Named IP sets read from files: plain CIDR lists (blocklists such as FireHOL's or
//! Spamhaus DROP, or an operator's own list) and Azure's published Service Tags JSON.
//!
//! This is the firewall's only I/O, and it is synchronous and bounded: a file is read whole
//! (up to [`MAX_FEED_BYTES`]) and parsed in one pass, so the config loader can call it while
//! building a snapshot aside (from a blocking task if on the runtime) and discard everything
//! if any file is bad. Parsing is strict: a line or tag that does not mean what the operator
//! thinks would silently admit or refuse the wrong people, so it is an error that names the
//! file, the line or tag, and what is accepted instead.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

use super::IpSet;

/// Well above any real feed (Azure's Public Service Tags file is a few MB, the largest FireHOL
/// lists less). A larger file is a wrong path, such as a disk image, and is refused before it
/// fills memory.
pub const MAX_FEED_BYTES: u64 = 64 << 20;

/// How much of a bad line an error quotes: enough to recognise it, short enough for a log line.
const QUOTE_CHARS: usize = 80;

/// What kind of file an IP set is read from; chosen by the operator, never guessed from the
/// content, so that a truncated JSON download cannot be half-read as something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSetFormat {
    /// One address or CIDR prefix per line, with `#` or `;` comments.
    CidrList,
    /// Azure's Service Tags JSON (`ServiceTags_Public_*.json`), filtered to the named tags.
    AzureServiceTags,
}

impl IpSetFormat {
    /// The config spelling (`cidr-list`, `azure-service-tags`); exact, so that one spelling
    /// appears in every config and every message.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cidr-list" => Some(Self::CidrList),
            "azure-service-tags" => Some(Self::AzureServiceTags),
            _ => None,
        }
    }

    /// The spelling [`IpSetFormat::parse`] accepts, for messages that tell the operator what
    /// to write.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CidrList => "cidr-list",
            Self::AzureServiceTags => "azure-service-tags",
        }
    }
}

impl fmt::Display for IpSetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an IP set file could not be used. Each message names the file (when known) and what to
/// change; the parsers report without a path and [`load`] adds it.
#[derive(Debug, Error)]
pub enum FeedError {
    /// The file could not be opened or read.
    #[error("{}: cannot read IP set file: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is larger than any feed should be.
    #[error("{}: IP set file is larger than {max} bytes; check that the path names the feed", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, [`MAX_FEED_BYTES`].
        max: u64,
    },
    /// The file is not UTF-8 text, so it is neither a CIDR list nor JSON.
    #[error("{}: IP set file is not UTF-8 text (bad byte at offset {offset}); check the path and the format", .path.display())]
    NotText {
        /// The file.
        path: PathBuf,
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// A line of a CIDR list is not an address or prefix.
    #[error("{}line {line}: {problem}: {text:?}", origin(.path))]
    Line {
        /// The file, once [`load`] knows it.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// The line, trimmed and cut to 80 characters.
        text: String,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The file is not Service Tags JSON (or not JSON at all, e.g. a truncated download).
    #[error(
        "{}not Azure Service Tags JSON (expected {{\"values\": [{{\"name\": …, \"properties\": {{\"addressPrefixes\": […]}}}}]}}): {source}",
        origin(.path)
    )]
    Json {
        /// The file, once [`load`] knows it.
        path: Option<PathBuf>,
        /// serde_json's error, which gives the line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A prefix inside a requested service tag does not parse.
    #[error("{}service tag {tag:?}: address prefix {prefix:?}: {problem}", origin(.path))]
    Prefix {
        /// The file, once [`load`] knows it.
        path: Option<PathBuf>,
        /// The tag the prefix belongs to.
        tag: String,
        /// The prefix, cut to 80 characters.
        prefix: String,
        /// What is wrong.
        problem: String,
    },
    /// A requested service tag is not in the file.
    #[error(
        "{}service tag {tag:?} is not in the file{}; tag names are case-sensitive, as in Azure's file (e.g. \"AzureCloud.westeurope\", \"Sql.WestEurope\")",
        origin(.path),
        did_you_mean(.suggestion)
    )]
    UnknownTag {
        /// The file, once [`load`] knows it.
        path: Option<PathBuf>,
        /// The tag as requested.
        tag: String,
        /// A tag in the file that differs only in case, if there is one.
        suggestion: Option<String>,
    },
    /// Service tags were requested as a format but no tag was named.
    #[error(
        "{}format azure-service-tags needs at least one tag (such as \"AzureCloud.westeurope\"); taking every tag would admit all of Azure",
        origin(.path)
    )]
    NoTags {
        /// The file, once [`load`] knows it.
        path: Option<PathBuf>,
    },
    /// Tags were given for a format that has none.
    #[error(
        "{}: tags select entries of an azure-service-tags file, and this IP set's format is {format}; remove the tags or change the format",
        .path.display()
    )]
    TagsNotApplicable {
        /// The file.
        path: PathBuf,
        /// The format that was given.
        format: IpSetFormat,
    },
}

impl FeedError {
    /// Fills in the file for errors the parsers raised without knowing it.
    fn in_file(mut self, file: &Path) -> Self {
        match &mut self {
            Self::Line { path, .. }
            | Self::Json { path, .. }
            | Self::Prefix { path, .. }
            | Self::UnknownTag { path, .. }
            | Self::NoTags { path } => {
                path.get_or_insert_with(|| file.to_path_buf());
            }
            Self::Read { .. } | Self::TooLarge { .. } | Self::NotText { .. } | Self::TagsNotApplicable { .. } => {}
        }
        self
    }
}

/// `"path: "` when the file is known, else nothing.
fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref().map_or_else(String::new, |p| format!("{}: ", p.display()))
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion.as_ref().map_or_else(String::new, |s| format!(" (did you mean {s:?}?)"))
}

/// Reads an IP set file and compiles it.
///
/// `tags` selects entries of an `azure-service-tags` file and must be empty for a `cidr-list`.
/// A CIDR list with no entries yields an empty set, since an empty blocklist is normal; the
/// caller decides whether an empty allow-list (which admits nobody) deserves a warning. An
/// Azure tag that exists but lists no prefixes likewise contributes nothing.
pub fn load(path: &Path, format: IpSetFormat, tags: &[String]) -> Result<IpSet, FeedError> {
    if format == IpSetFormat::CidrList && !tags.is_empty() {
        return Err(FeedError::TagsNotApplicable { path: path.to_path_buf(), format });
    }
    let text = read_text(path, MAX_FEED_BYTES)?;
    let nets = match format {
        IpSetFormat::CidrList => parse_cidr_list(&text),
        IpSetFormat::AzureServiceTags => parse_service_tags(&text, tags),
    }
    .map_err(|e| e.in_file(path))?;
    Ok(IpSet::from_nets(nets))
}

/// Parses a CIDR list: one address or prefix per line (a bare address is a /32 or /128), with
/// blank lines, surrounding whitespace, and comments from `#` (FireHOL, hand-written lists) or
/// `;` (Spamhaus DROP's `1.2.3.0/24 ; SBL123`) to the end of the line.
///
/// The first line that is anything else is an error naming its number: one unreadable line
/// may be a format the operator did not intend, so none of the file is used.
pub fn parse_cidr_list(text: &str) -> Result<Vec<IpNet>, FeedError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut nets = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.split(['#', ';']).next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let net = parse_entry(entry).map_err(|problem| FeedError::Line {
            path: None,
            line: i + 1,
            text: excerpt(raw.trim()),
            problem,
        })?;
        nets.push(net);
    }
    Ok(nets)
}

/// The part of Azure's Service Tags file flexgate reads; every other field is ignored, so that
/// new fields in Microsoft's weekly files do not break loading.
#[derive(Deserialize)]
struct ServiceTagsFile {
    values: Vec<ServiceTag>,
}

#[derive(Deserialize)]
struct ServiceTag {
    name: String,
    #[serde(default)]
    id: String,
    properties: ServiceTagProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceTagProperties {
    #[serde(default)]
    address_prefixes: Vec<String>,
}

/// Extracts the prefixes of the requested tags from Azure's Service Tags JSON, matching each
/// against an entry's `name` or `id` exactly as Azure spells them (`AzureCloud`,
/// `AzureCloud.westeurope`, `Sql.WestEurope`).
///
/// Every requested tag must be present: a misspelt tag that matched nothing would silently
/// shrink an allow-list to nobody, or a blocklist to nothing. An empty `tags` is an error for
/// the same reason. The result is the union of the tags' prefixes.
pub fn parse_service_tags(json: &str, tags: &[String]) -> Result<Vec<IpNet>, FeedError> {
    if tags.is_empty() {
        return Err(FeedError::NoTags { path: None });
    }
    let json = json.strip_prefix('\u{feff}').unwrap_or(json);
    let file: ServiceTagsFile = serde_json::from_str(json).map_err(|source| FeedError::Json { path: None, source })?;
    let mut nets = Vec::new();
    for tag in tags {
        let mut found = false;
        for entry in file.values.iter().filter(|v| v.name == *tag || v.id == *tag) {
            found = true;
            for prefix in &entry.properties.address_prefixes {
                let net = parse_entry(prefix.trim()).map_err(|problem| FeedError::Prefix {
                    path: None,
                    tag: tag.clone(),
                    prefix: excerpt(prefix),
                    problem,
                })?;
                nets.push(net);
            }
        }
        if !found {
            let suggestion = file
                .values
                .iter()
                .flat_map(|v| [&v.name, &v.id])
                .find(|known| known.eq_ignore_ascii_case(tag))
                .cloned();
            return Err(FeedError::UnknownTag { path: None, tag: tag.clone(), suggestion });
        }
    }
    Ok(nets)
}

/// Reads a whole file as text, refusing more than `max` bytes without reading them all.
fn read_text(path: &Path, max: u64) -> Result<String, FeedError> {
    let read_error = |source| FeedError::Read { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(FeedError::TooLarge { path: path.to_path_buf(), max });
    }
    String::from_utf8(bytes)
        .map_err(|e| FeedError::NotText { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })
}

/// One address or prefix. Stricter than `IpNet::from_str` where that would be ambiguous (a
/// signed prefix length) and more specific in its messages, which it returns as the problem
/// for the caller to locate.
fn parse_entry(s: &str) -> Result<IpNet, String> {
    const EXPECTED: &str = "expected an IP address or CIDR prefix such as 192.0.2.0/24, 192.0.2.7 or 2001:db8::/32";
    let Some((addr, len)) = s.split_once('/') else {
        return s.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("not an IP address; {EXPECTED}"));
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("{:?} is not an IP address; {EXPECTED}", excerpt(addr)))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let bad_len = || format!("prefix length {:?} is not a number from 0 to {max} ({family})", excerpt(len));
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_len());
    }
    let len = len.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad_len)?;
    IpNet::new(addr, len).map_err(|_| bad_len())
}

/// At most [`QUOTE_CHARS`] characters of `s`, marked when cut.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", s.get(..cut).unwrap_or(s)),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
