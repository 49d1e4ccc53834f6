//! Pre-processing before a provider sees a conversation: control characters out, and the
//! conversation fitted into the model's context window (the system prompt and the newest turns
//! are kept; the oldest turns go first).

use super::{ChatMessage, Role, estimate_prompt_tokens, estimate_tokens};

/// Control characters mean nothing to a model and can smuggle terminal escapes into logs and
/// answers; newlines and tabs stay.
pub fn strip_control(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub struct TooLong {
    /// Estimated tokens of the system prompt and the last turn, which are never dropped.
    pub needed: u32,
    pub available: u32,
}

/// The conversation to send: cleaned, and with the oldest non-system turns dropped until the
/// estimate plus `max_output` fits `context`. Fails when even the system prompt and the last
/// turn do not fit.
pub fn fit(
    messages: &[ChatMessage],
    context: u32,
    max_output: u32,
) -> Result<Vec<ChatMessage>, TooLong> {
    let cleaned: Vec<ChatMessage> = messages
        .iter()
        .map(|m| ChatMessage::new(m.role, strip_control(&m.content)))
        .collect();
    let available = context.saturating_sub(max_output);
    let cost = |m: &ChatMessage| estimate_tokens(&m.content).saturating_add(4);
    let system: u32 = cleaned
        .iter()
        .filter(|m| m.role == Role::System)
        .map(cost)
        .fold(2, u32::saturating_add);
    let last = cleaned.iter().rposition(|m| m.role != Role::System);
    let mut budget = available.saturating_sub(system);
    let needed = system.saturating_add(last.map_or(0, |i| cost(&cleaned[i])));
    if needed > available {
        return Err(TooLong { needed, available });
    }
    // Walk back from the newest turn, keeping turns while they fit.
    let mut keep: Vec<bool> = cleaned.iter().map(|m| m.role == Role::System).collect();
    for (index, message) in cleaned.iter().enumerate().rev() {
        if message.role == Role::System {
            continue;
        }
        let c = cost(message);
        if c > budget {
            break;
        }
        budget -= c;
        keep[index] = true;
    }
    // Once one turn is dropped, older ones go too (no holes in the conversation); system
    // turns stay wherever they are.
    if let Some(first_dropped) = keep
        .iter()
        .zip(&cleaned)
        .rposition(|(kept, m)| !kept && m.role != Role::System)
    {
        for (index, message) in cleaned.iter().enumerate().take(first_dropped) {
            if message.role != Role::System {
                keep[index] = false;
            }
        }
    }
    let fitted: Vec<ChatMessage> = cleaned
        .into_iter()
        .zip(keep)
        .filter_map(|(m, kept)| kept.then_some(m))
        .collect();
    debug_assert!(estimate_prompt_tokens(&fitted) <= available.saturating_add(2));
    Ok(fitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Role, words: usize) -> ChatMessage {
        ChatMessage::new(role, "word ".repeat(words))
    }

    #[test]
    fn keeps_the_system_prompt_and_the_newest_turns() {
        let conversation = vec![
            turn(Role::System, 10),
            turn(Role::User, 400),
            turn(Role::Assistant, 400),
            turn(Role::User, 40),
            turn(Role::Assistant, 40),
            turn(Role::User, 40),
        ];
        let fitted = fit(&conversation, 1_000, 500).expect("the newest turns fit");
        assert_eq!(fitted.len(), 4);
        assert_eq!(fitted[0].role, Role::System);
        assert_eq!(fitted[1..], conversation[3..]);
        assert_eq!(
            fit(&conversation, 100_000, 500).expect("everything fits"),
            conversation
        );
    }

    #[test]
    fn a_last_turn_that_cannot_fit_is_an_error_and_controls_are_stripped() {
        let too_long = fit(&[turn(Role::User, 2_000)], 1_000, 500).unwrap_err();
        assert!(too_long.needed > too_long.available);
        let cleaned = fit(
            &[ChatMessage::new(Role::User, "a\u{1b}[31mb\u{0}c\nd\te")],
            1_000,
            10,
        )
        .expect("a short turn fits");
        assert_eq!(cleaned[0].content, "a[31mbc\nd\te");
    }
}
