//! The raw TOML form of a mapping file, as serde reads it (spans kept for line numbers).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMapping {
    pub(super) version: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) input: Option<RawInput>,
    #[serde(default)]
    pub(super) nodes: Vec<Spanned<RawNode>>,
    #[serde(default)]
    pub(super) relationships: Vec<Spanned<RawRel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    pub(super) format: Option<Spanned<String>>,
    pub(super) delimiter: Option<Spanned<String>>,
    pub(super) operation_field: Option<Spanned<String>>,
    pub(super) version_field: Option<Spanned<String>>,
    pub(super) version_property: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) label: Spanned<String>,
    pub(super) key: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) properties: Vec<Spanned<RawProp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProp {
    pub(super) name: Spanned<String>,
    pub(super) field: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub(super) ty: Option<Spanned<String>>,
    pub(super) item: Option<Spanned<String>>,
    pub(super) separator: Option<Spanned<String>>,
    pub(super) default: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRel {
    #[serde(rename = "type")]
    pub(super) rel_type: Spanned<String>,
    pub(super) start: Spanned<RawEnd>,
    pub(super) end: Spanned<RawEnd>,
    #[serde(default)]
    pub(super) properties: Vec<Spanned<RawProp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnd {
    pub(super) label: Spanned<String>,
    pub(super) key: Spanned<BTreeMap<String, Spanned<RawEndKey>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawEndKey {
    Field(String),
    Typed {
        field: String,
        #[serde(rename = "type")]
        ty: String,
    },
}
