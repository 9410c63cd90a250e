//! Chat templates: built-in names give llama.cpp's exact output, the model's
//! own template is used, bad input is an error.

mod common;

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use llama_rs::{apply_chat_template, builtin_chat_templates, ChatMessage, ChatTemplate, Error, Model, ModelParams};

fn conversation() -> Vec<ChatMessage> {
    vec![ChatMessage::system("You are helpful."), ChatMessage::user("Hi!"), ChatMessage::assistant("Hello.")]
}

#[test]
fn chatml_by_name() {
    let out = apply_chat_template(Some("chatml"), &conversation(), true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n\
         <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>assistant\n"
    );
    let without = apply_chat_template(Some("chatml"), &conversation(), false).unwrap();
    assert_eq!(without, out.strip_suffix("<|im_start|>assistant\n").unwrap());
    // None is chatml, as in llama.cpp.
    assert_eq!(apply_chat_template(None, &conversation(), true).unwrap(), out);
}

#[test]
fn llama3_by_name() {
    let out = apply_chat_template(Some("llama3"), &conversation(), true).unwrap();
    assert_eq!(
        out,
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn output_longer_than_the_first_buffer() {
    // Many short messages: the formatted text is far longer than the first
    // buffer (2 x message bytes + 256), so the call is repeated with the
    // returned length.
    let messages: Vec<ChatMessage> = (0..300).map(|i| ChatMessage::new("u", i.to_string())).collect();
    let out = apply_chat_template(Some("chatml"), &messages, false).unwrap();
    let expected: String = (0..300).map(|i| format!("<|im_start|>u\n{i}<|im_end|>\n")).collect();
    assert_eq!(out, expected);
}

#[test]
fn unknown_template_is_error() {
    match apply_chat_template(Some("no-such-template-xyz"), &conversation(), true) {
        Err(Error::ChatTemplate { message, .. }) => assert!(message.contains("no-such-template-xyz"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn nul_bytes_are_errors() {
    let bad_content = vec![ChatMessage::user("a\0b")];
    assert!(matches!(apply_chat_template(Some("chatml"), &bad_content, true), Err(Error::Nul { position: 1, .. })));
    let bad_role = vec![ChatMessage::new("us\0er", "hi")];
    assert!(matches!(apply_chat_template(Some("chatml"), &bad_role, true), Err(Error::Nul { .. })));
    assert!(matches!(apply_chat_template(Some("chat\0ml"), &conversation(), true), Err(Error::Nul { .. })));
}

#[test]
fn builtin_list_has_the_known_names() {
    let names = builtin_chat_templates();
    for n in ["chatml", "llama3", "llama2", "mistral-v7", "gemma"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    for n in &names {
        // Every listed name is accepted by apply_chat_template.
        let r = apply_chat_template(Some(n), &[ChatMessage::user("x")], true);
        assert!(r.is_ok(), "{n}: {r:?}");
    }
}

#[test]
fn model_template_is_used() {
    let m = common::tiny();
    let by_model = m.apply_chat_template(&conversation(), true).unwrap();
    assert_eq!(by_model, apply_chat_template(Some("chatml"), &conversation(), true).unwrap());
    // The synthetic Llama 3 template writes `bos_token` first, as the real
    // ones do; llama.cpp's built-in format leaves BOS to the tokenizer.
    let bpe = common::tiny_bpe();
    let bos = ChatTemplate::from_model(bpe, None).unwrap().bos_text().to_string();
    assert_eq!(bos, "<|begin_of_text|>");
    assert_eq!(
        bpe.apply_chat_template(&conversation(), true).unwrap(),
        bos + &apply_chat_template(Some("llama3"), &conversation(), true).unwrap()
    );
}

#[test]
fn model_without_template_is_error() {
    let path = SyntheticModel::new(ModelShape::tiny())
        .vocab(VocabKind::Spm)
        .weight_type(WeightType::F32)
        .seed(common::SEED)
        .chat_template(None)
        .write_cached(llama_rs_suite::FIXTURE_DIR)
        .unwrap();
    let m = Model::load_with(path, ModelParams::default().vocab_only(true)).unwrap();
    assert!(matches!(m.apply_chat_template(&conversation(), true), Err(Error::ChatTemplate { .. })));
}
