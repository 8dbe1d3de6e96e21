//! `cloudsync mfa ...`: two-factor authentication with an authenticator app.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result, bail};
use cloudsync_types::ErrorCode;
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use zeroize::Zeroizing;

use super::connect;
use super::output::print_json;
use crate::args::MfaCmd;

/// Runs one `mfa` subcommand.
///
/// # Errors
/// Not logged in, a wrong code, or a server error.
pub async fn run(cmd: MfaCmd) -> Result<()> {
    let client = connect()?;
    let auth = client.auth();
    match cmd {
        MfaCmd::Enable { password_stdin, json } => {
            let e = match auth.mfa_enroll(None).await {
                Err(e) if e.code() == Some(ErrorCode::ReauthenticationRequired) => {
                    let password = if password_stdin {
                        super::read_stdin_line("password")?
                    } else if std::io::stdin().is_terminal() {
                        Zeroizing::new(
                            rpassword::prompt_password("Your login is older than 15 minutes; password: ")
                                .context("cannot read the password")?,
                        )
                    } else {
                        bail!("{e}: pass --password-stdin (or log in again first)");
                    };
                    auth.mfa_enroll(Some(&password)).await?
                }
                other => other?,
            };
            if json.json {
                return print_json(&serde_json::json!({"otpauth_uri": e.otpauth_uri, "secret": e.secret}));
            }
            if !std::io::stdin().is_terminal() {
                bail!(
                    "no terminal to type the first code in: run `cloudsync mfa enable --json` to get the secret, then \
                     `cloudsync mfa confirm CODE`"
                );
            }
            eprintln!("Scan this QR code with your authenticator app (Google Authenticator, Aegis, 1Password, ...):\n");
            eprintln!("{}", qr(&e.otpauth_uri)?);
            eprintln!("Or add it by hand: secret {} (time-based, 6 digits, 30 seconds).", e.secret);
            eprintln!("URI: {}\n", e.otpauth_uri);
            let code = prompt_code("Code shown by the app: ")?;
            let codes = auth.mfa_confirm(&code).await?;
            print_recovery_codes(&codes.recovery_codes, false)
        }
        MfaCmd::Confirm { code, json } => {
            let codes = auth.mfa_confirm(&code).await?;
            print_recovery_codes(&codes.recovery_codes, json.json)
        }
        MfaCmd::Disable { code } => {
            // Workspaces that require MFA stop letting this account in; say which before it happens.
            let strict: Vec<String> = client
                .workspaces()
                .list()
                .await
                .map(|l| l.into_iter().filter(|w| w.require_mfa).map(|w| w.name).collect())
                .unwrap_or_default();
            if !strict.is_empty() {
                eprintln!(
                    "warning: these workspaces require two-factor authentication, and you lose access to them: {}",
                    strict.join(", ")
                );
            }
            let code = code_or_prompt(code)?;
            auth.mfa_disable(&code).await?;
            eprintln!("Two-factor authentication is off. Logins now need only the password.");
            if !strict.is_empty() {
                eprintln!("Turn it on again (`cloudsync mfa enable`) to reach {} again.", strict.join(", "));
            }
            Ok(())
        }
        MfaCmd::RecoveryCodes { regenerate, code, json } => {
            if regenerate {
                let code = code_or_prompt(code)?;
                let codes = auth.mfa_recovery_codes(&code).await?;
                return print_recovery_codes(&codes.recovery_codes, json.json);
            }
            let s = auth.mfa_status().await?;
            if json.json {
                return print_json(&serde_json::json!({"recovery_codes_left": s.recovery_codes_left}));
            }
            if !s.enabled {
                bail!("two-factor authentication is off: turn it on with `cloudsync mfa enable`");
            }
            println!(
                "{} unused recovery codes. Make new ones with `cloudsync mfa recovery-codes --regenerate`.",
                s.recovery_codes_left
            );
            Ok(())
        }
        MfaCmd::Status(json) => {
            let s = auth.mfa_status().await?;
            if json.json {
                return print_json(&s);
            }
            match (s.enabled, s.pending) {
                (true, _) => println!("on ({} unused recovery codes)", s.recovery_codes_left),
                (false, true) => println!("off (an enrolment is waiting for `cloudsync mfa confirm CODE`)"),
                (false, false) => println!("off"),
            }
            Ok(())
        }
    }
}

/// The QR code of `text` for a terminal, light modules drawn as blocks (for the usual dark background), with
/// its quiet zone.
fn qr(text: &str) -> Result<String> {
    let code = QrCode::new(text.as_bytes()).context("cannot make a QR code of the otpauth URI")?;
    Ok(code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build())
}

fn print_recovery_codes(codes: &[String], json: bool) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({"recovery_codes": codes}));
    }
    eprintln!("Two-factor authentication is on. Logins now ask for the app's code.");
    eprintln!(
        "Recovery codes (each works once in place of a code; store them somewhere safe, they are not shown again):"
    );
    for c in codes {
        println!("  {c}");
    }
    Ok(())
}

fn code_or_prompt(code: Option<String>) -> Result<Zeroizing<String>> {
    match code {
        Some(c) => Ok(Zeroizing::new(c)),
        None if std::io::stdin().is_terminal() => {
            prompt_code("Code from your authenticator app (or a recovery code): ")
        }
        None => bail!("this needs the current code of your authenticator app (or a recovery code): pass --code CODE"),
    }
}

/// Reads a code from the terminal.
pub(crate) fn prompt_code(prompt: &str) -> Result<Zeroizing<String>> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line).context("cannot read the code")?;
    let code = Zeroizing::new(line.trim().to_owned());
    if code.is_empty() {
        bail!("no code given");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qr_code_is_a_square_of_block_characters() {
        let text =
            qr("otpauth://totp/CloudSync:a%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=CloudSync")
                .expect("qr");
        let lines: Vec<&str> = text.lines().collect();
        let width = lines[0].chars().count();
        assert!(width > 25 && lines.iter().all(|l| l.chars().count() == width), "{text}");
        // Two modules per character, so about half as many lines as columns.
        assert!(lines.len() * 2 >= width && lines.len() * 2 <= width + 2, "{} lines of {width}", lines.len());
        assert!(text.chars().all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}' | '\n')));
    }
}
