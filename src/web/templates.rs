//! Tera templates, embedded in the binary. `templates.dir` may point at a directory whose files
//! replace embedded ones of the same relative name (branding, wording) without a rebuild.

use std::path::Path;

use anyhow::Context as _;
use rust_embed::RustEmbed;
use tera::Tera;

use crate::error::AppError;

#[derive(RustEmbed)]
#[folder = "templates/"]
struct EmbeddedTemplates;

pub struct Templates {
    tera: Tera,
}

impl Templates {
    pub fn load(override_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut sources: Vec<(String, String)> = Vec::new();
        for name in EmbeddedTemplates::iter() {
            let file = EmbeddedTemplates::get(&name)
                .with_context(|| format!("embedded template {name} vanished"))?;
            let text = String::from_utf8(file.data.into_owned())
                .with_context(|| format!("template {name} is not UTF-8"))?;
            sources.push((name.into_owned(), text));
        }
        if let Some(dir) = override_dir {
            for (name, text) in read_dir_recursive(dir)
                .with_context(|| format!("cannot read templates.dir {}", dir.display()))?
            {
                sources.retain(|(existing, _)| existing != &name);
                sources.push((name, text));
            }
        }
        let mut tera = Tera::default();
        tera.autoescape_on(vec![".html"]);
        tera.register_function("asset", super::assets::tera_function);
        tera.add_raw_templates(sources)
            .map_err(|e| anyhow::anyhow!("templates do not compile: {}", describe(&e)))?;
        Ok(Self { tera })
    }

    pub fn has(&self, name: &str) -> bool {
        self.tera.get_template_names().any(|known| known == name)
    }

    pub fn render(&self, name: &str, context: &tera::Context) -> Result<String, AppError> {
        self.tera.render(name, context).map_err(|e| {
            AppError::internal(anyhow::anyhow!("cannot render {name}: {}", describe(&e)))
        })
    }
}

/// Tera puts the useful part of an error in its source chain.
fn describe(error: &tera::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn read_dir_recursive(root: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                let name = relative.to_string_lossy().replace('\\', "/");
                found.push((name, std::fs::read_to_string(&path)?));
            }
        }
    }
    Ok(found)
}
